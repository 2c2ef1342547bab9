"""Test set-up: 8 simulated CPU devices, quiet TensorFlow, and the one way to reach ../shared."""

import os

# Before anything imports jax: 8 host devices so sharding tests see a real mesh.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
# One persistent compilation cache for the whole run, the jobs tests start as subprocesses
# included: most of them compile what an earlier one already did (a demo run: 27 s cold, 12 s
# warm). The key covers the program, the devices and XLA_FLAGS, so a hit is the same executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".pytest_cache", "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def shared_dir() -> Path:
  """The shared assets folder (CLIP BPE vocabulary, official-code fixtures).

  It sits beside the checkout in CI (``../shared``); elsewhere point DFERCLIP_SHARED at a copy.
  Tests that need it skip, saying why, where it is absent -- except in CI (env ``CI`` set), where
  they fail: the parity tests against the official code must always run there.
  """
  root = Path(os.environ.get("DFERCLIP_SHARED", REPO.parent / "shared"))
  if not root.is_dir():
    _missing(f"shared assets not found at {root} (set DFERCLIP_SHARED to the folder holding "
             f"clip-tokenizer/ and fixtures/)")
  return root


def _missing(reason: str) -> None:
  """Skip, or fail under CI: a CI run without the shared assets would pass without parity tests."""
  if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
    pytest.fail(f"{reason}; CI is set, so the tests that need it must run, not skip", pytrace=False)
  pytest.skip(reason)


@pytest.fixture(scope="session")
def clip_tokenizer_dir() -> Path:
  path = shared_dir() / "clip-tokenizer"
  if not path.is_dir():
    _missing(f"{path} is missing")
  return path


@pytest.fixture(scope="session")
def official_fixture_dir() -> Path:
  path = shared_dir() / "fixtures" / "official-dferclip-tiny"
  if not path.is_dir():
    _missing(f"{path} is missing")
  return path
