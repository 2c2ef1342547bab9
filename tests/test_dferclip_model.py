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
from dferclip_jax.models.prompts import PromptLearner, splice_sources
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
    if "to_out" in p["attn"]:  # which configurations have it: test_output_projection_...
      o = o @ p["attn"]["to_out"]["kernel"] + p["attn"]["to_out"]["bias"]
    x = x + o
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


def test_output_projection_is_dropped_only_for_one_head_spanning_the_width():
  """The official ``project_out = not (heads == 1 and dim_head == dim)``: one head as wide as the
  features has no ``to_out``; one narrower head, or several full-width heads, have one. Outputs
  against the numpy reference (rtol 1e-5; a dropped or extra projection moves them by O(1))."""
  frames = np.random.default_rng(2).standard_normal((2, 3, 12)).astype(np.float32)
  for heads, dim_head, projected in ((1, 12, False), (1, 4, True), (2, 12, True)):
    module = TemporalTransformer(num_frames=4, depth=1, heads=heads, dim_head=dim_head, mlp_dim=20)
    params = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(3), frames)["params"])
    assert ("to_out" in params["layers_0"]["attn"]) == projected, (heads, dim_head)
    ours = np.asarray(module.apply({"params": params}, frames))
    reference = numpy_temporal(jax.tree.map(lambda a: a.astype(np.float64), params),
                               frames.astype(np.float64), heads, dim_head)
    np.testing.assert_allclose(ours, reference[:, 0], rtol=1e-5, atol=1e-5)


def test_every_linear_layer_and_the_class_token_follow_pytorch_init():
  """Every kernel and bias is U(+-1/sqrt(fan_in)) and fills its range (max |w| within 10% of the
  bound: a bound off by sqrt(fan_in) or a factor of 2 fails), the class token is N(0, 1)."""
  module = TemporalTransformer(num_frames=4, depth=1, heads=4, dim_head=32, mlp_dim=256)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 64)))["params"]
  layer = params["layers_0"]
  fan_ins = {"to_qkv": 64, "to_out": 128, "fc1": 64, "fc2": 256}
  denses = {"to_qkv": layer["attn"]["to_qkv"], "to_out": layer["attn"]["to_out"], "fc1": layer["fc1"],
            "fc2": layer["fc2"]}
  for name, dense in denses.items():
    bound = fan_ins[name] ** -0.5
    for kind, value in dense.items():
      top = float(jnp.abs(value).max())
      assert 0.9 * bound < top <= bound, (name, kind, top, bound)
      # Both signs: U(-b, b), not U(0, b) or a constant (planted: uniform(+b, b) fills nothing).
      assert float(value.min()) < -0.5 * bound and float(value.max()) > 0.5 * bound, (name, kind)
  assert set(denses["to_qkv"]) == {"kernel"}
  assert 0.85 < float(jnp.std(params["cls_token"])) < 1.15  # 64 draws of N(0, 1); planted N(0, 2) fails
  with pytest.raises(ValueError, match=r"^5 frames, but the temporal model has positions for 4(\n|$)"):
    module.apply({"params": params}, jnp.zeros((1, 5, 64)))
  # Fewer frames than positions: the first t + 1 position embeddings are used.
  module.apply({"params": params}, jnp.zeros((1, 3, 64)))


def test_layer_norm_epsilon_is_torchs_1e_5_where_it_matters():
  """Features of variance ~1e-6 (class token, positions and frames scaled by 1e-3), where the
  LayerNorm epsilon dominates the variance: the output still follows the numpy reference with
  eps 1e-5 (rtol 1e-4; eps 2e-5 or flax's 1e-6 moves the normalised values by > 10%)."""
  module = TemporalTransformer(num_frames=3, depth=1, heads=2, dim_head=4, mlp_dim=16)
  frames = 1e-3 * np.random.default_rng(5).standard_normal((2, 3, 8)).astype(np.float32)
  params = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(6), frames)["params"])
  params = {**params, "cls_token": 1e-3 * params["cls_token"], "pos_embedding": 1e-3 * params["pos_embedding"]}
  ours = np.asarray(module.apply({"params": params}, frames))
  reference = numpy_temporal(jax.tree.map(lambda a: a.astype(np.float64), params),
                             frames.astype(np.float64), 2, 4)
  np.testing.assert_allclose(ours, reference[:, 0], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- prompt splicing


def layout_by_lists(position, name_len, n_ctx, length):
  """Where each output position comes from, by concatenating the layout's pieces: ("tok", i) is
  token i of the tokenized prompt [sos, X * n_ctx, class * name_len, eot, pad...], ("ctx", k)
  context vector k."""
  ctx = [("ctx", k) for k in range(n_ctx)]
  name = [("tok", 1 + n_ctx + i) for i in range(name_len)]
  rest = [("tok", j) for j in range(1 + n_ctx + name_len, length)]
  half = n_ctx // 2
  middle = {"end": ctx + name, "front": name + ctx, "middle": ctx[:half] + name + ctx[half:]}
  return [("tok", 0)] + middle[position] + rest


def test_splice_sources_equal_the_layout_built_from_its_pieces():
  """All three outputs of splice_sources against the layouts concatenated piece by piece: is_ctx
  exactly, ctx_index where a context vector is read, token_index where a token is, and every index
  a valid gather index (no out-of-range read, even where the other source is taken). Three
  classes of different name lengths, n_ctx odd, even and 1, a class text ending at the last slot."""
  for position in ("end", "front", "middle"):
    for n_ctx, name_lens, length in ((4, [1, 2, 5], 12), (3, [2, 1, 4], 9), (1, [3, 1, 2], 7)):
      # ("end" returns is_ctx as [1, L], the same for every class; broadcasting gives [C, L].)
      is_ctx, ctx_index, token_index = (np.broadcast_to(np.asarray(a), (3, length)) for a in splice_sources(
          np.array(name_lens), n_ctx, length, position))
      for c, name_len in enumerate(name_lens):
        layout = layout_by_lists(position, name_len, n_ctx, length)
        where = f"{position}, n_ctx {n_ctx}, class {c}"
        assert is_ctx[c].tolist() == [kind == "ctx" for kind, _ in layout], where
        assert [ctx_index[c, j] if is_ctx[c, j] else token_index[c, j] for j in range(length)] == [
            i for _, i in layout], where
      assert ctx_index.min() >= 0 and ctx_index.max() < n_ctx, (position, n_ctx)
      assert token_index.min() >= 0 and token_index.max() < length, (position, n_ctx)


def test_bad_position_and_class_count_are_refused_by_name():
  with pytest.raises(ValueError, match=r"^class token position 'start': expected one of \('end', 'middle', 'front'\)$"):
    splice_sources(np.array([1]), 2, 6, "start")
  learner = PromptLearner(3, 2)
  with pytest.raises(ValueError, match=r"^2 prompts for 3 classes(\n|$)"):  # JAX may append a note
    learner.init(jax.random.PRNGKey(0), jnp.zeros((2, 6, 4)), jnp.array([1, 1]))


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


def test_mean_pooling_is_the_normalised_frame_mean(tiny_model):
  """temporal_pooling="mean", the ablation: the video feature is the L2-normalised mean of the frame
  features (numpy), the logits 100 * video @ text.T (rtol 1e-5; the transformer's output differs
  by O(1))."""
  model, variables = tiny_model
  video = np.random.default_rng(1).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
  out = model.clone(temporal_pooling="mean").apply(variables, video, return_features=True)
  mean = np.asarray(out["frame_features"], np.float64).mean(1)
  np.testing.assert_allclose(out["video_features"], mean / np.linalg.norm(mean, axis=-1, keepdims=True),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits"], 100 * out["video_features"] @ out["text_features"].T, rtol=1e-5)
  with pytest.raises(ValueError, match=r"temporal_pooling='max': expected one of \('transformer', 'mean'\)"):
    model.clone(temporal_pooling="max").apply(variables, video)


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
