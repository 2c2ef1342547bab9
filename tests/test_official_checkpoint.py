"""Official DFER-CLIP checkpoints: parity with the official code's outputs, conversion, and every
kind of bad file (each a clear error, none executing foreign code)."""

import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

from dferclip_jax import export, official, torch_pickle
from dferclip_jax.cli import convert_official
from dferclip_jax.models.dferclip import prompt_tokens
from dferclip_jax.tokenizer import load_tokenizer

torch = pytest.importorskip("torch")  # only to *write* test checkpoints; reading needs no torch
# fp32 parity, relative to the largest official logit. Measured: 1.1e-6. Planted: LayerNorm eps
# 1e-6 errs by 1.4e-2, CLIP's mean/std applied to the pixels by 9e-2.
PARITY_RTOL = 1e-5


def rel_err(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def fixture(official_fixture_dir):
  video = np.load(official_fixture_dir / "video.npy").astype(np.float32) / 255.0
  return official_fixture_dir, video, np.load(official_fixture_dir / "logits.npy")


@pytest.fixture(scope="module")
def loaded(fixture):
  return official.load_checkpoint(fixture[0] / "official.pth")


def test_logits_match_the_official_code(fixture, loaded):
  _, video, expected = fixture
  model, variables = loaded
  assert (model.num_classes, model.n_ctx, model.class_specific, model.temporal_layers) == (7, 8, True, 1)
  v = model.clip_config.vision_config
  assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size) == (64, 2, 16, 64)
  assert rel_err(model.apply(variables, video), expected) <= PARITY_RTOL


def test_recovered_prompts_equal_the_tokenizer(fixture, loaded, clip_tokenizer_dir):
  meta = json.loads((fixture[0] / "meta.json").read_text())
  ids, name_lens = prompt_tokens(load_tokenizer(clip_tokenizer_dir), meta["texts"], n_ctx=8)
  _, variables = loaded
  np.testing.assert_array_equal(variables["prompts"]["ids"], ids)
  np.testing.assert_array_equal(variables["prompts"]["name_lens"], name_lens)


def test_convert_then_restore(fixture, tmp_path):
  path, video, expected = fixture
  summary = convert_official.convert(str(path / "official.pth"), str(tmp_path / "out"),
                                     class_names=list("abcdefg"))
  assert summary["num_classes"] == 7 and summary["clip"]["vision"]["hidden_size"] == 64
  model, variables, card = export.load_model(tmp_path / "out")
  assert card["class_names"] == list("abcdefg")
  assert rel_err(model.apply(variables, video), expected) <= PARITY_RTOL
  with pytest.raises(FileExistsError, match="already holds a model checkpoint"):
    convert_official.convert(str(path / "official.pth"), str(tmp_path / "out"))


# ----------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def state_dict(fixture):
  return torch.load(fixture[0] / "official.pth", weights_only=True)["state_dict"]


def save(tmp_path, obj, name="ckpt.pth", **kwargs):
  path = tmp_path / name
  torch.save(obj, path, **kwargs)
  return path


class RecorderMeter:
  """Shaped like the official main.RecorderMeter: numpy training curves."""

  def __init__(self):
    self.total_epoch = 2
    self.epoch_losses = np.zeros((2, 2), np.float32)
    self.epoch_accuracy = np.ones((2, 2), np.float32)


def test_full_official_checkpoint_with_recorder_and_optimizer(tmp_path, monkeypatch, state_dict, fixture):
  """What the official main.py saves: epoch, state_dict, best_acc, optimizer, recorder."""
  RecorderMeter.__module__ = "__main__"
  RecorderMeter.__qualname__ = "RecorderMeter"
  monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
  path = save(tmp_path, {"epoch": 3, "state_dict": state_dict, "best_acc": torch.tensor(55.0),
                         "optimizer": opt.state_dict(), "recorder": RecorderMeter()})
  with pytest.raises(pickle.UnpicklingError):  # torch's own safe mode refuses it ...
    torch.load(path, weights_only=True)
  raw = torch_pickle.load(path)  # ... ours stubs the one known class
  assert isinstance(raw["recorder"], torch_pickle.RecorderMeterStub)
  np.testing.assert_array_equal(raw["recorder"].epoch_accuracy, np.ones((2, 2)))
  model, variables = official.load_checkpoint(path)
  assert rel_err(model.apply(variables, fixture[1]), fixture[2]) <= PARITY_RTOL


def test_foreign_class_never_runs(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = save(tmp_path, {"state_dict": {"x": torch.zeros(1)}, "payload": Evil()})
  with pytest.raises(torch_pickle.TorchCheckpointError, match=r"refusing to load the global (posix|os)\.system"):
    official.load_checkpoint(path)
  assert not marker.exists()


def test_truncated_file(tmp_path, fixture):
  data = (fixture[0] / "official.pth").read_bytes()
  path = tmp_path / "truncated.pth"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(torch_pickle.TorchCheckpointError, match="truncated"):
    official.load_checkpoint(path)


def test_storage_missing_from_archive(tmp_path, fixture):
  path = tmp_path / "gutted.pth"
  with zipfile.ZipFile(fixture[0] / "official.pth") as src, zipfile.ZipFile(path, "w") as dst:
    for item in src.infolist():
      if not item.filename.endswith("/data/3"):
        dst.writestr(item, src.read(item))
  with pytest.raises(torch_pickle.TorchCheckpointError, match="storage .*data/3 is missing"):
    official.load_checkpoint(path)


def test_legacy_format(tmp_path, state_dict):
  path = save(tmp_path, {"state_dict": state_dict}, _use_new_zipfile_serialization=False)
  with pytest.raises(torch_pickle.TorchCheckpointError, match="legacy"):
    official.load_checkpoint(path)


def test_missing_key(tmp_path, state_dict):
  broken = {k: v for k, v in state_dict.items() if k != "module.temporal_net.temporal_transformer.layers.0.1.fn.fn.net.3.bias"}
  with pytest.raises(official.OfficialCheckpointError,
                     match=r"missing key 'temporal_net.temporal_transformer.layers.0.1.fn.fn.net.3.bias'"):
    official.load_checkpoint(save(tmp_path, {"state_dict": broken}))


def test_wrong_shape(tmp_path, state_dict):
  broken = dict(state_dict)
  broken["module.image_encoder.ln_post.bias"] = torch.zeros(65)
  with pytest.raises(official.OfficialCheckpointError,
                     match=r"mis-shaped: params/clip/vision_model/post_layernorm/bias: checkpoint \(65,\), expected \(64,\)"):
    official.load_checkpoint(save(tmp_path, {"state_dict": broken}))


def test_unknown_key_and_edited_duplicate(tmp_path, state_dict):
  extra = {**state_dict, "module.temporal_net.extra_head.weight": torch.zeros(2)}
  with pytest.raises(official.OfficialCheckpointError, match="does not know: .*extra_head"):
    official.load_checkpoint(save(tmp_path, {"state_dict": extra}, "a.pth"))
  edited = dict(state_dict)
  edited["module.clip_model_.visual.ln_pre.bias"] = edited["module.clip_model_.visual.ln_pre.bias"] + 1
  with pytest.raises(official.OfficialCheckpointError, match="clip_model_.visual.ln_pre.bias differs"):
    official.load_checkpoint(save(tmp_path, {"state_dict": edited}, "b.pth"))


def test_prompt_row_not_in_vocabulary(tmp_path, state_dict):
  broken = dict(state_dict)
  suffix = broken["module.prompt_learner.token_suffix"].clone()
  suffix[2, 1] += 0.5
  broken["module.prompt_learner.token_suffix"] = suffix
  with pytest.raises(official.OfficialCheckpointError, match="prompt of class 2, token 10: .*matches no row"):
    official.load_checkpoint(save(tmp_path, {"state_dict": broken}))


def test_generic_context_and_plain_state_dict(tmp_path, state_dict, fixture):
  """A bare state dict (no 'module.' prefix, no outer dict) with a generic context also loads."""
  plain = {k[len("module."):]: v for k, v in state_dict.items()}
  plain["prompt_learner.ctx"] = plain["prompt_learner.ctx"][0].clone()
  model, variables = official.load_checkpoint(save(tmp_path, plain), class_token_position="middle")
  assert not model.class_specific and variables["params"]["prompt_learner"]["ctx"].shape == (8, 64)
  assert model.apply(variables, fixture[1]).shape == (2, 7)


def test_a_model_json_that_cannot_be_read_is_named(tmp_path):
  card = tmp_path / "model.json"
  with pytest.raises(export.ModelCheckpointError, match=r"model\.json: no such model description$"):
    export.read_model_card_file(card)
  for text, error in (
      ('{"format": "dferclip-jax/model/v1"', r"model\.json: not a readable JSON model description \(Expecting"),
      ("[]", r"model\.json: format 'list', expected 'dferclip-jax/model/v1'$"),
      ('{"format": "v0"}', r"model\.json: format 'v0', expected 'dferclip-jax/model/v1'$"),
      (" " * (32 << 20), r"model\.json: not a readable JSON model description \(33554432 bytes, over")):
    card.write_text(text)
    with pytest.raises(export.ModelCheckpointError, match=error):
      export.read_model_card_file(card)
  card.write_text('{"format": "dferclip-jax/model/v1", "model": {}}')
  assert export.read_model_card_file(card) == {"format": "dferclip-jax/model/v1", "model": {}}
