"""The JSON files of a run: ``reporting.json_plain`` and ``write_json`` against hand-written JSON."""

import jax.numpy as jnp
import numpy as np

from dferclip_jax.train import reporting


def test_json_plain_makes_numpy_and_jax_values_plain_and_non_finite_null(tmp_path):
  value = {"uar": np.float32(12.5), "steps": np.int64(7), "scalar": jnp.asarray(3, jnp.int32),
           "matrix": np.array([[1, 2], [3, 4]]), "nan": float("nan"), "inf": np.float64(np.inf),
           3: (np.float32(0.25), "text", None, True)}
  assert reporting.json_plain(value) == {
      "uar": 12.5, "steps": 7, "scalar": 3, "matrix": [[1, 2], [3, 4]], "nan": None, "inf": None,
      "3": [0.25, "text", None, True]}
  reporting.write_json(tmp_path / "report.json", {"a": np.float32(0.5), "b": [np.nan]})
  assert (tmp_path / "report.json").read_text() == '{\n  "a": 0.5,\n  "b": [\n    null\n  ]\n}\n'



def test_a_finished_run_is_one_whose_results_json_reads_complete(tmp_path):
  """crossval, reproduce and the trainer skip a run on this; what cannot be read is unfinished."""
  path = tmp_path / "results.json"
  assert reporting.read_results(tmp_path) is None and reporting.finished_results(tmp_path) is None
  path.write_text('{"complete": true, "steps": 4}')
  assert reporting.finished_results(tmp_path) == {"complete": True, "steps": 4}
  for unfinished in ('{"complete": false}', "[1, 2]", '"complete"', "{}", '{"complete": tr', '{"\xff": 1}'):
    path.write_bytes(unfinished.encode("latin-1"))
    assert reporting.finished_results(tmp_path) is None, unfinished
