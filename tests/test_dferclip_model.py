"""The DFER-CLIP module: temporal model against a numpy reference, prompt splicing by hand, and
the module's input handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dferclip_jax import class_texts
from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, init_clip_params
from dferclip_jax.models.dferclip import build_dferclip
from dferclip_jax.models.prompts import PromptLearner
from dferclip_jax.models.temporal import TemporalTransformer
from dferclip_jax.tokenizer import WordTokenizer

TEXTS = ["happy face.", "a very sad face.", "calm."]


# ----------------------------------------------------------------------------- temporal model


def numpy_temporal(params, frames, heads, dim_head):
  """The official Temporal_Transformer_Cls, written out in numpy; returns all tokens."""
  def ln(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  n, t, d = frames.shape
  x = np.concatenate([np.broadcast_to(params["cls_token"], (n, 1, d)), frames], 1)
  x = x + params["pos_embedding"][:, :t + 1]
  i = 0
  while f"layers_{i}" in params:
    p = params[f"layers_{i}"]
    h = ln(x, p["attn_norm"]) @ p["attn"]["to_qkv"]["kernel"]
    q, k, v = np.split(h, 3, -1)
    q, k, v = (a.reshape(n, t + 1, heads, dim_head).transpose(0, 2, 1, 3) for a in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) * dim_head ** -0.5
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = (s @ v).transpose(0, 2, 1, 3).reshape(n, t + 1, heads * dim_head)
    x = x + o @ p["attn"]["to_out"]["kernel"] + p["attn"]["to_out"]["bias"]
    h = gelu(ln(x, p["mlp_norm"]) @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    x = x + h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    i += 1
  return x


def test_temporal_matches_numpy_reference_and_reads_the_class_token():
  module = TemporalTransformer(num_frames=6, depth=2, heads=4, dim_head=8, mlp_dim=48)
  frames = np.random.default_rng(0).standard_normal((3, 6, 24)).astype(np.float32)
  params = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(1), frames)["params"])
  ours = np.asarray(module.apply({"params": params}, frames))
  reference = numpy_temporal(jax.tree.map(lambda a: a.astype(np.float64), params),
                             frames.astype(np.float64), 4, 8)
  np.testing.assert_allclose(ours, reference[:, 0], rtol=1e-5, atol=1e-5)
  # The output is the class token's, not frame 0's (the UnLoc bug).
  assert np.abs(ours - reference[:, 1]).max() > 1e-2
  # And the class token is used: changing it changes the output.
  moved = {**params, "cls_token": params["cls_token"] + 0.5}
  assert np.abs(np.asarray(module.apply({"params": moved}, frames)) - ours).max() > 1e-3


def test_temporal_init_follows_pytorch_defaults():
  module = TemporalTransformer(num_frames=16, depth=1, heads=8, dim_head=64, mlp_dim=1024)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 512)))["params"]
  assert params["cls_token"].shape == (1, 1, 512) and params["pos_embedding"].shape == (1, 17, 512)
  assert 0.9 < float(jnp.std(params["pos_embedding"])) < 1.1  # N(0, 1)
  fc1 = params["layers_0"]["fc1"]
  bound = 512 ** -0.5  # U(+-1/sqrt(fan_in)) for weights and biases
  assert float(jnp.abs(fc1["kernel"]).max()) <= bound and float(jnp.abs(fc1["kernel"]).max()) > 0.9 * bound
  assert float(jnp.abs(fc1["bias"]).max()) <= bound
  assert "bias" not in params["layers_0"]["attn"]["to_qkv"]  # bias-free qkv
  with pytest.raises(ValueError, match="17 frames, but the temporal model has positions for 16"):
    module.apply({"params": params}, jnp.zeros((1, 17, 512)))


# ----------------------------------------------------------------------------- prompt splicing


def spliced_layout(position, name_lens, n_ctx=4, length=12, class_specific=True):
  """Runs the prompt learner on tokens whose embedding is their position, ctx = 100 + index."""
  c = len(name_lens)
  tokens = np.broadcast_to(np.arange(length, dtype=np.float32)[None, :, None], (c, length, 1))
  learner = PromptLearner(c, n_ctx, class_specific, position)
  k = np.arange(n_ctx, dtype=np.float32)
  if class_specific:
    ctx = 100 + k[None, :, None] + 1000 * np.arange(c, dtype=np.float32)[:, None, None]
  else:
    ctx = (100 + k)[:, None]
  out = learner.apply({"params": {"ctx": np.asarray(ctx, np.float32)}}, tokens, np.array(name_lens))
  return np.asarray(out)[..., 0].astype(int).tolist()


def test_end_front_middle_layouts_by_hand():
  # Tokenized prompt: [sos=0, X1..X4 (1-4), class tokens (5..5+nl-1), eot, pads...]; nl = 2 and 3.
  c = lambda k: 100 + k  # class 0's context vectors
  d = lambda k: 1100 + k  # class 1's
  assert spliced_layout("end", [2, 3]) == [
      [0, c(0), c(1), c(2), c(3), 5, 6, 7, 8, 9, 10, 11],
      [0, d(0), d(1), d(2), d(3), 5, 6, 7, 8, 9, 10, 11]]
  assert spliced_layout("front", [2, 3]) == [
      [0, 5, 6, c(0), c(1), c(2), c(3), 7, 8, 9, 10, 11],
      [0, 5, 6, 7, d(0), d(1), d(2), d(3), 8, 9, 10, 11]]
  assert spliced_layout("middle", [2, 3]) == [
      [0, c(0), c(1), 5, 6, c(2), c(3), 7, 8, 9, 10, 11],
      [0, d(0), d(1), 5, 6, 7, d(2), d(3), 8, 9, 10, 11]]
  # Odd n_ctx: the official split puts n//2 before the class and the rest after.
  assert spliced_layout("middle", [1], n_ctx=3, length=8) == [[0, c(0), 4, c(1), c(2), 5, 6, 7]]


def test_generic_context_is_shared_by_all_classes():
  layout = spliced_layout("end", [2, 3], class_specific=False)
  assert layout[0][1:5] == layout[1][1:5] == [100, 101, 102, 103]
  learner = PromptLearner(3, 4, class_specific=False)
  params = learner.init(jax.random.PRNGKey(0), jnp.zeros((3, 10, 8)), jnp.array([1, 1, 1]))["params"]
  assert params["ctx"].shape == (4, 8)
  assert 0.01 < float(jnp.std(params["ctx"])) < 0.04  # std 0.02


# ----------------------------------------------------------------------------- the module


@pytest.fixture(scope="module")
def tiny_model():
  config = clip_config.tiny(image_size=32, patch_size=16, width=32, layers=1, projection_dim=32)
  tokenizer = WordTokenizer(TEXTS + ["X"])
  config = clip_config.CLIPConfig(
      text_config=clip_config.CLIPTextConfig(**{**config.text_config.__dict__,
                                                "vocab_size": tokenizer.vocab_size}),
      vision_config=config.vision_config, projection_dim=config.projection_dim)
  clip_params = jax.tree.map(np.asarray, init_clip_params(CLIP(config)))
  return build_dferclip(config, clip_params, TEXTS, tokenizer, rng=jax.random.PRNGKey(0), n_ctx=2,
                        temporal_heads=2, temporal_dim_head=16, temporal_mlp_dim=64, num_frames=4)


def test_module_outputs_and_inputs(tiny_model):
  model, variables = tiny_model
  video = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
  out = model.apply(variables, video, return_features=True)
  assert set(out) == {"logits", "video_features", "text_features", "frame_features"}
  assert out["logits"].shape == (2, 3) and out["frame_features"].shape == (2, 4, 32)
  np.testing.assert_allclose(np.linalg.norm(out["video_features"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["logits"], 100 * out["video_features"] @ out["text_features"].T, rtol=1e-5)
  # encode_video is the path __call__ takes: the same features, alone.
  video_features, frame_features = model.apply(variables, video, method="encode_video")
  np.testing.assert_array_equal(video_features, out["video_features"])
  np.testing.assert_array_equal(frame_features, out["frame_features"])
  # uint8 input is scaled in the model: the same as float pixels in [0, 1].
  np.testing.assert_allclose(model.apply(variables, video.astype(np.float32) / 255), out["logits"],
                             rtol=1e-5, atol=1e-5)
  normalized = model.clone(normalize_input=True).apply(variables, video)
  assert np.abs(normalized - out["logits"]).max() > 1e-3
  # The prompt ids are the official "X X <text>" prompts, and name_lens count the text's tokens.
  tokenizer = WordTokenizer(TEXTS + ["X"])
  assert variables["prompts"]["name_lens"].tolist() == [len(tokenizer.encode(t)) for t in TEXTS]
  assert variables["prompts"]["ids"][0, 1:3].tolist() == [tokenizer.vocab["x"]] * 2


def test_class_texts(tmp_path):
  assert len(class_texts.load("class_descriptor", 7)) == 7
  eleven = class_texts.load("class_names", 11)
  assert eleven[0] == "happiness." and eleven[-1] == "disappointment."
  assert class_texts.load("class_names_with_context", 7)[3] == "an expression of anger."
  mine = tmp_path / "texts.txt"
  mine.write_text("one.\ntwo.\n")
  assert class_texts.load("class_descriptor", 2, mine) == ["one.", "two."]
  with pytest.raises(ValueError, match=r"texts.txt: 2 class texts for 7 classes"):
    class_texts.load("class_descriptor", 7, mine)
  mine.write_text("one.\n\ntwo.\n")
  with pytest.raises(ValueError, match=r"texts.txt:2: empty line"):
    class_texts.load("class_descriptor", 3, mine)
  with pytest.raises(ValueError, match="no built-in class_names texts for 5 classes"):
    class_texts.load("class_names", 5)
