"""One module turns a user's path string into a path (``dferclip_jax/storage.py``): everywhere
else ``Path(...)`` and the builtin ``open(...)`` would take ``gs://bucket/x`` for a local folder
named ``gs:``. A call that can only ever see a local path (the package's own data files, a
temporary folder, frames read from local disk or a FUSE mount) says so on its line with
``# local:`` and the reason (or on a comment line just above it)."""

import ast

from conftest import REPO

OWNER = REPO / "dferclip_jax" / "storage.py"
MARKER = "# local:"


def _calls(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      f = node.func
      if isinstance(f, ast.Name) and f.id in ("Path", "open"):
        yield node, f.id
      elif isinstance(f, ast.Attribute) and f.attr == "Path" and isinstance(f.value, ast.Name) \
          and f.value.id == "pathlib":
        yield node, "pathlib.Path"


def offenders() -> list[str]:
  found = []
  for path in sorted([*(REPO / "dferclip_jax").rglob("*.py"), REPO / "main.py"]):
    if path == OWNER:
      continue
    lines = path.read_text().splitlines()
    for node, name in _calls(ast.parse(path.read_text(), str(path))):
      if node.args == [] and not node.keywords:
        continue  # Path() alone: the current folder
      span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
      above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
      if not any(MARKER in line for line in span) and not above.startswith(MARKER):
        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}(...) {span[0].strip()}")
  return found


def test_user_paths_go_through_the_storage_module():
  assert offenders() == []


def test_the_check_sees_a_bare_path_call(tmp_path, monkeypatch):
  """Planted: a module calling Path(user_value) without the marker is reported."""
  tree = ast.parse("from pathlib import Path\ndef f(workdir):\n  return Path(workdir) / 'x'\n")
  assert [name for _, name in _calls(tree)] == ["Path"]
  tree = ast.parse("def f(p):\n  with open(p) as h:\n    return h.read()\n")
  assert [name for _, name in _calls(tree)] == ["open"]
