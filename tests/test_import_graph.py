"""The project's import graph has no cycle, and every module imports on its own.

The graph is read from the source (an AST walk over every ``.py`` of ``dferclip_jax/``,
``configs/`` and ``main.py``, found by walking the folders, so new modules are covered without a
list here). Every ``import``/``from ... import`` counts, at module level or inside a function (a
lazy import hides a cycle, it does not remove it); imports under ``if TYPE_CHECKING:`` do not
run and do not count. An edge goes to the module named, or to ``pkg.name`` when ``name`` is a
submodule of ``pkg``; the implicit import of parent packages (``__init__``) is not an edge: the
package ``__init__`` files hold no imports of their own modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dferclip_jax", "configs")
SCRIPTS = ("main.py",)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
  """Dotted module name -> file, for every module of PACKAGES and SCRIPTS under ``root``."""
  modules = {}
  for package in PACKAGES:
    for path in sorted((root / package).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      modules[".".join(parts)] = path
  for script in SCRIPTS:
    modules[Path(script).stem] = root / script
  return modules


def _is_type_checking(test: ast.expr) -> bool:
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
  """Every Import/ImportFrom node that can run (skips ``if TYPE_CHECKING:`` bodies)."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    for child in ast.iter_child_nodes(node):
      if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
        continue
      stack.append(child)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
  """Module -> the project modules it imports (module- and function-level, relative resolved)."""
  graph = {}
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    edges = set()
    for node in _imports(ast.parse(path.read_text(), filename=str(path))):
      if isinstance(node, ast.Import):
        edges.update(alias.name for alias in node.names if alias.name in modules)
        continue
      base = node.module or ""
      if node.level:  # relative: strip (level - 1) parts from this module's package
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
      for alias in node.names:
        if f"{base}.{alias.name}" in modules:
          edges.add(f"{base}.{alias.name}")
        elif base in modules:
          edges.add(base)
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None (iterative depth-first search, sorted for stable output)."""
  state = {}  # name -> 1 on the current path, 2 done
  for start in sorted(graph):
    if state.get(start):
      continue
    path, iters = [start], [iter(sorted(graph[start]))]
    state[start] = 1
    while path:
      nxt = next(iters[-1], None)
      if nxt is None:
        state[path.pop()] = 2
        iters.pop()
      elif state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      elif not state.get(nxt):
        state[nxt] = 1
        path.append(nxt)
        iters.append(iter(sorted(graph.get(nxt, ()))))
  return None


def test_the_walk_sees_the_known_imports():
  """The walk itself: a few edges that certainly exist (module-, function-level, relative)."""
  modules = project_modules()
  graph = import_graph(modules)
  assert {"dferclip_jax", "dferclip_jax.models.clip", "configs.common", "main"} <= set(modules)
  assert "dferclip_jax.models.clip" in graph["dferclip_jax.models.clip_checkpoint"]
  assert "dferclip_jax.models.param_tree" in graph["dferclip_jax.models.dferclip"]
  assert "configs.common" in graph["configs.dfew"]  # `from configs import common`
  assert not graph["dferclip_jax.models.param_tree"]  # the leaf every loader may import


def test_the_walk_resolves_relative_and_function_level_imports(tmp_path):
  pkg = tmp_path / "dferclip_jax"
  (pkg / "sub").mkdir(parents=True)
  (tmp_path / "configs").mkdir()
  (tmp_path / "main.py").write_text("import dferclip_jax.a\n")
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from . import c\n")
  (pkg / "a.py").write_text("def f():\n  from .sub import c\n")
  (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from . import a\n")
  (pkg / "sub" / "c.py").write_text("from ..b import thing\nfrom .. import a\n")
  graph = import_graph(project_modules(tmp_path))
  assert graph == {"dferclip_jax": set(), "dferclip_jax.a": {"dferclip_jax.sub.c"},
                   "dferclip_jax.b": set(), "dferclip_jax.sub": {"dferclip_jax.sub.c"},
                   "dferclip_jax.sub.c": {"dferclip_jax.b", "dferclip_jax.a"},
                   "main": {"dferclip_jax.a"}}
  assert find_cycle(graph) == ["dferclip_jax.a", "dferclip_jax.sub.c", "dferclip_jax.a"]
  assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycle():
  cycle = find_cycle(import_graph(project_modules()))
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Run in a fresh interpreter: each project module imported with every project module (and every
# absl flag they defined) forgotten first, so a module that works only because another was
# imported before it fails here. Third-party modules stay loaded (that is what keeps it fast).
# TFDS builders register their dataset name once per process, so registration is off here.
_ISOLATED = r"""
import contextlib, importlib, json, sys, traceback
from absl import flags
try:
  from tensorflow_datasets.core.registered import skip_registration
except ImportError:
  skip_registration = contextlib.nullcontext
names = json.loads(sys.argv[1])
packages = tuple(json.loads(sys.argv[2]))
failures = {}
for name in names:
  for loaded in [m for m in sys.modules if m.split(".")[0] in packages]:
    del sys.modules[loaded]
  defined = set(flags.FLAGS)
  try:
    with skip_registration():
      importlib.import_module(name)
  except BaseException:
    failures[name] = traceback.format_exc(limit=-3)
  for flag in set(flags.FLAGS) - defined:
    delattr(flags.FLAGS, flag)
print(json.dumps(failures))
"""


def test_each_module_imports_in_isolation():
  modules = project_modules()
  packages = sorted({name.split(".")[0] for name in modules})
  result = subprocess.run([sys.executable, "-c", _ISOLATED, json.dumps(sorted(modules)),
                           json.dumps(packages)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  failures = json.loads(result.stdout.strip().splitlines()[-1])
  assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())
