"""The one helper that reaches ../shared: skips with its reason on a plain clone, fails under CI."""

import pytest

import conftest


@pytest.mark.parametrize("ci, outcome", [(None, pytest.skip.Exception), ("true", pytest.fail.Exception),
                                         ("1", pytest.fail.Exception), ("false", pytest.skip.Exception)])
def test_missing_shared_assets_skip_locally_and_fail_in_ci(tmp_path, monkeypatch, ci, outcome):
  monkeypatch.setenv("DFERCLIP_SHARED", str(tmp_path / "absent"))
  if ci is None:
    monkeypatch.delenv("CI", raising=False)
  else:
    monkeypatch.setenv("CI", ci)
  with pytest.raises(outcome, match="shared assets not found at .*absent"):
    conftest.shared_dir()


def test_present_shared_assets_are_returned(tmp_path, monkeypatch):
  monkeypatch.setenv("DFERCLIP_SHARED", str(tmp_path))
  monkeypatch.setenv("CI", "true")
  assert conftest.shared_dir() == tmp_path
