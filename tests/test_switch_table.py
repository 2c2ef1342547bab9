"""docs/testing.md's switch table covers every config key and every main.py flag.

Each key of every config (``configs/*.py``: the base recipe, the open-set sections, the demo's
generator and random-init architecture) and each flag ``main.py`` defines has one row. Its last
column names the tests that run it off its default against an independent reference, as
``tests/FILE.py::test_name``: each must exist. A key that computes nothing (a log interval, a
progress bar) says so with a dash and the reason instead. A key added without a row, a row left
behind by a removed key, and a row naming a test that does not exist all fail here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "testing.md"
KEYS_HEADING = "## Every switch, tested off its default"
FLAGS_HEADING = "### Flags of main.py"
TEST_REF = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")
# Dict-valued keys whose entries are data (group name -> regex, group name -> lr, axis -> size):
# the row of the key covers its entries.
DICT_KEYS = {"optim.groups", "optim.lr", "mesh"}


def config_keys() -> set[str]:
  """Every dotted key of every config module's get_config(), and of the open-set sections."""
  from configs import common
  keys = set()

  def walk(node, prefix=""):
    for name, value in node.items():
      key = prefix + name
      if hasattr(value, "items") and key not in DICT_KEYS:
        walk(value, key + ".")  # a section: its keys have the rows
      else:
        keys.add(key)

  walk(common.add_openset(common.base_config(), "MAFW"))
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.stem in ("__init__", "common"):
      continue
    walk(importlib.import_module(f"configs.{path.stem}").get_config(None))
  return keys


def main_flags() -> set[str]:
  """Names of the flags main.py defines (its AST: DEFINE_*("name", ...))."""
  tree = ast.parse((REPO / "main.py").read_text())
  return {node.args[0].value for node in ast.walk(tree)
          if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr.startswith("DEFINE_") and node.args and isinstance(node.args[0], ast.Constant)}


def table_rows(heading: str) -> dict[str, str]:
  """``{name: last cell}`` of the markdown table under ``heading`` (until the next heading)."""
  text = DOC.read_text()
  assert heading in text, f"{DOC}: no section {heading!r}"
  section = text.split(heading, 1)[1]
  section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
  rows = {}
  for line in section.splitlines():
    match = re.match(r"\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
    if match:
      name, rest = match.groups()
      assert name not in rows, f"{DOC}: two rows for {name}"
      rows[name] = rest.split("|")[-1].strip()
  return rows


def defined_tests() -> dict[str, set[str]]:
  found = {}
  for path in (REPO / "tests").glob("test_*.py"):
    tree = ast.parse(path.read_text())
    found[path.name] = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
  return found


def check_rows(rows: dict[str, str], expected: set[str], what: str) -> None:
  missing, stale = sorted(expected - set(rows)), sorted(set(rows) - expected)
  assert not missing, f"{DOC}: no row for the {what} {missing}: add one naming the test that runs it off its default"
  assert not stale, f"{DOC}: rows for {what}s that do not exist: {stale}"
  functions = defined_tests()
  for name, cell in rows.items():
    refs = TEST_REF.findall(cell)
    if not refs:
      assert re.match(r"^— \S", cell), f"{DOC}: row {name}: name a test (tests/FILE.py::test_x) or say '— why not'"
      continue
    for file, function in refs:
      assert function in functions.get(file, ()), f"{DOC}: row {name}: tests/{file}::{function} does not exist"


def test_every_config_key_has_a_row():
  check_rows(table_rows(KEYS_HEADING), config_keys(), "config key")


def test_every_flag_has_a_row():
  check_rows(table_rows(FLAGS_HEADING), main_flags(), "flag")


def test_the_check_sees_a_key_added_without_a_row(monkeypatch):
  """The check itself bites: a key planted in the base recipe is reported by name."""
  from configs import common
  real = common.base_config

  def planted():
    c = real()
    c.optim.nesterov = False
    return c

  monkeypatch.setattr(common, "base_config", planted)
  with pytest.raises(AssertionError, match=r"no row for the config key \['optim.nesterov'\]"):
    check_rows(table_rows(KEYS_HEADING), config_keys(), "config key")


def test_the_check_sees_a_row_naming_a_missing_test():
  rows = {"seed": "tests/test_data_pipeline.py::test_no_such_test (seed 3)"}
  with pytest.raises(AssertionError, match="test_no_such_test does not exist"):
    check_rows(rows, {"seed"}, "config key")
