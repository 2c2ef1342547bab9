"""One home per concept: dataset names and fold counts are written once, in ``data/datasets.py``.

The source of the package, the configs and main.py is parsed (not imported) and searched for the
forms a repeated dataset fact takes: a literal list/tuple/set naming two or more datasets, a dict
literal mapping dataset names to plain values (a fold-count or path table), ``range(1, 6)``, a
fold compared with a literal 5, ``fold_configs(5)``, and "1..5" / "fold5" in message strings.
Dicts that map names to code (native's split-file parsers) are dispatch, not facts, and pass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dferclip_jax.data import class_orders
from dferclip_jax.data import datasets

REPO = Path(__file__).resolve().parents[1]
HOME = "dferclip_jax/data/datasets.py"
NAMES = {"dfew", "ferv39k", "mafw", "afew", "synthetic"}  # this test's own, independent list
FOLD_TEXT = re.compile(r"\b1\s*\.\.\s*5\b|\bfold5\b")


def _sources() -> list[Path]:
  files = sorted((REPO / "dferclip_jax").rglob("*.py")) + sorted((REPO / "configs").glob("*.py"))
  return files + [REPO / "main.py"]


def _plain(node: ast.AST) -> bool:
  """A value written out: a constant, or a tuple/list of constants."""
  if isinstance(node, ast.Constant):
    return True
  return isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts)


def _names_in(nodes) -> int:
  return sum(isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.lower() in NAMES
             for n in nodes)


def _is_five(node) -> bool:
  return isinstance(node, ast.Constant) and node.value == 5 and not isinstance(node.value, bool)


def _mentions_fold(node) -> bool:
  return any(("fold" in n.id.lower() if isinstance(n, ast.Name) else "fold" in n.attr.lower())
             for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute)))


def _docstrings(tree: ast.AST) -> set[int]:
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        out.add(id(body[0].value))
  return out


def dataset_facts(source: str) -> list[tuple[int, str]]:
  """(line, what) for every repeated-fact form in one module's source."""
  tree = ast.parse(source)
  docstrings = _docstrings(tree)
  found = []
  for node in ast.walk(tree):
    line = getattr(node, "lineno", 0)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and _names_in(node.elts) >= 2:
      found.append((line, "a list of dataset names"))
    elif isinstance(node, ast.Dict) and _names_in(node.keys) >= 2 and all(map(_plain, node.values)):
      found.append((line, "a table keyed by dataset names"))
    elif isinstance(node, ast.Call):
      func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
      args = node.args
      if func == "range" and len(args) == 2 and all(isinstance(a, ast.Constant) for a in args) \
          and (args[0].value, args[1].value) == (1, 6):
        found.append((line, "range(1, 6): a fold count"))
      elif "fold" in func.lower() and any(map(_is_five, args)):
        found.append((line, f"{func}(5): a fold count"))
    elif isinstance(node, ast.Compare) and _mentions_fold(node) \
        and any(map(_is_five, [node.left, *node.comparators])):
      found.append((line, "a fold compared with 5"))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
        and FOLD_TEXT.search(node.value):
      found.append((line, f"a fold count in the text {node.value[:60]!r}..."))
  return found


def test_dataset_names_and_fold_counts_live_in_one_module():
  offenders = []
  for path in _sources():
    rel = path.relative_to(REPO).as_posix()
    if rel == HOME:
      continue
    offenders += [f"{rel}:{line}: {what}" for line, what in dataset_facts(path.read_text())]
  assert not offenders, ("dataset facts repeated outside " + HOME + " (import them from there):\n  "
                         + "\n  ".join(offenders))


def test_home_has_what_the_check_looks_for():
  """Each form is found when planted in a small source; the table itself is data, not literals."""
  assert [what for _, what in dataset_facts((REPO / HOME).read_text())] == []  # data, not literals
  assert dataset_facts('NAMES = ("dfew", "ferv39k", "mafw")\n') == [(1, "a list of dataset names")]
  assert dataset_facts('FOLDS = {"DFEW": 5, "MAFW": 5}\n') == [(1, "a table keyed by dataset names")]
  assert dataset_facts('PARSE = {"dfew": f, "mafw": g}\n') == []  # dispatch to code
  assert [w for _, w in dataset_facts("for k in range(1, 6): pass\n")] == ["range(1, 6): a fold count"]
  assert [w for _, w in dataset_facts("ok = 1 <= config.fold <= 5\n")] == ["a fold compared with 5"]
  assert [w for _, w in dataset_facts("c = fold_configs(5)\n")] == ["fold_configs(5): a fold count"]
  assert len(dataset_facts('raise ValueError("DFEW has folds 1..5")\n')) == 1
  assert dataset_facts('"""Folds 1..5 for DFEW."""\n') == []  # documentation may say it


def test_table_entries():
  # Expectations written out from the datasets' publications and DFER-CLIP's scripts.
  assert datasets.NATIVE == ("dfew", "ferv39k", "mafw")
  assert {n: datasets.get(n).num_folds for n in sorted(NAMES)} == {
      "afew": 0, "dfew": 5, "ferv39k": 0, "mafw": 5, "synthetic": 5}
  assert datasets.get("mafw").class_names is class_orders.DFERCLIP_11
  assert datasets.get("afew").class_names is class_orders.HESP_7
  assert datasets.AUGMENTATIONS == ("dfew", "ferv39k", "mafw", "hesp", "none")
  assert datasets.get("ferv39k").folds() == (None,) and datasets.get("dfew").folds() == (1, 2, 3, 4, 5)
  assert datasets.get("dfew").default_list(3, "test") == "annotations/dfew/set_3_test.txt"
  assert datasets.get("afew").default_list(None, "test") == "annotations/afew/val.txt"
  assert datasets.tfds_split(2, "train") == "fold2_train" and datasets.tfds_split(None, "test") == "test"
  assert datasets.get("mafw").tfds_name == "mafw" and datasets.get("synthetic").tfds_name is None
  assert [n for n in sorted(NAMES) if datasets.get(n).generated] == ["synthetic"]
  assert datasets.get("ferv39k").has_fold(0) and not datasets.get("dfew").has_fold(6)


def test_unknown_dataset_names_itself_and_the_known_ones():
  with pytest.raises(datasets.UnknownDatasetError) as err:
    datasets.get("affectnet")
  assert str(err.value) == ("unknown dataset 'affectnet'; expected one of "
                            "['afew', 'dfew', 'ferv39k', 'mafw', 'synthetic']")
  with pytest.raises(ValueError, match="unknown dataset None"):  # a ValueError, also for non-strings
    datasets.get(None)
