"""The Flax CLIP against transformers' own outputs, its checkpoint loading, and the tokenizer."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from conftest import FIXTURES
from dferclip_jax.models import clip_config
from dferclip_jax.models.clip import CLIP, clip_param_shapes, eot_positions, init_clip_params
from dferclip_jax.models.clip_checkpoint import load_clip, pytorch_to_flax, resolve_checkpoint, save_clip
from dferclip_jax.models.param_tree import CheckpointMismatchError
from dferclip_jax.tokenizer import load_tokenizer, tokenize

HF_TINY = FIXTURES / "hf_clip_tiny"
FP32_RTOL = 1e-5  # relative to the largest reference magnitude


def assert_rel_close(actual, expected, rtol=FP32_RTOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  err = np.abs(actual - expected).max() / np.abs(expected).max()
  assert err <= rtol, f"relative error {err:.3g} > {rtol:.1g}"


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(HF_TINY / "reference.npz"))


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_matches_transformers_embeddings(fmt, reference):
  model, params = load_clip(HF_TINY / fmt)
  image = model.apply({"params": params}, reference["pixels"], method=CLIP.encode_image)
  text = model.apply({"params": params}, reference["input_ids"], method=CLIP.encode_text)
  assert image.dtype == jnp.float32 and text.dtype == jnp.float32
  assert_rel_close(image, reference["image_features"])
  assert_rel_close(text, reference["text_features"])


def test_first_eos_pooling_rule_matches_transformers(reference):
  """Configs whose eos_token_id is not 2 pool at the first end-of-text id, as HF does."""
  model, params = load_clip(HF_TINY / "safetensors")
  first_eos = int(reference["first_eos_id"])
  model = CLIP(model.config.__class__(
      text_config=model.config.text_config.__class__(**{
          **model.config.text_config.__dict__, "eos_token_id": first_eos}),
      vision_config=model.config.vision_config, projection_dim=model.config.projection_dim))
  text = model.apply({"params": params}, reference["input_ids"], method=CLIP.encode_text)
  assert_rel_close(text, reference["text_features_first_eos"])
  # The two rules really pick different tokens on these rows.
  assert not np.array_equal(eot_positions(reference["input_ids"], 2),
                            eot_positions(reference["input_ids"], first_eos))


def test_embedding_path_equals_id_path(reference):
  model, params = load_clip(HF_TINY / "msgpack")
  ids = reference["input_ids"]
  embeds = model.apply({"params": params}, ids, method=CLIP.embed_tokens)
  positions = eot_positions(ids, model.config.text_config.eos_token_id)
  via_embeds = model.apply({"params": params}, embeds, positions, method=CLIP.encode_text_embeddings)
  np.testing.assert_array_equal(via_embeds, model.apply({"params": params}, ids, method=CLIP.encode_text))


def test_bfloat16_matmuls_keep_float32_params(reference):
  model, params = load_clip(HF_TINY / "safetensors", dtype=jnp.bfloat16)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  image = model.apply({"params": params}, reference["pixels"], method=CLIP.encode_image)
  assert image.dtype == jnp.float32
  assert_rel_close(image, reference["image_features"], rtol=5e-2)


def test_remat_changes_nothing_but_memory(reference):
  plain, params = load_clip(HF_TINY / "safetensors")
  remat, _ = load_clip(HF_TINY / "safetensors", remat=True)

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, reference["pixels"], method=CLIP.encode_image) ** 2)

  assert jax.tree.structure(init_clip_params(remat)) == jax.tree.structure(params)
  np.testing.assert_allclose(loss(remat, params), loss(plain, params), rtol=1e-6)
  g_plain, g_remat = jax.grad(lambda p: loss(plain, p))(params), jax.grad(lambda p: loss(remat, p))(params)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- bad checkpoints


def _edit_msgpack(tmp_path, edit):
  target = tmp_path / "ckpt"
  shutil.copytree(HF_TINY / "msgpack", target)
  weights = target / "flax_model.msgpack"
  flat = traverse_util.flatten_dict(serialization.msgpack_restore(weights.read_bytes()), sep="/")
  edit(flat)
  weights.write_bytes(serialization.msgpack_serialize(traverse_util.unflatten_dict(flat, sep="/")))
  return target


def test_missing_key_is_named(tmp_path):
  key = "vision_model/encoder/layers/1/mlp/fc2/bias"
  target = _edit_msgpack(tmp_path, lambda flat: flat.pop(key))
  with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): " + key):
    load_clip(target)


def test_unexpected_key_is_named(tmp_path):
  key = "vision_model/encoder/layers/2/mlp/fc2/bias"
  target = _edit_msgpack(tmp_path, lambda flat: flat.__setitem__(key, np.zeros(32, np.float32)))
  with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\): " + key):
    load_clip(target)


def test_misshaped_key_is_named(tmp_path):
  key = "text_model/encoder/layers/0/self_attn/q_proj/kernel"
  target = _edit_msgpack(tmp_path, lambda flat: flat.__setitem__(key, np.zeros((24, 12), np.float32)))
  with pytest.raises(CheckpointMismatchError, match=key + r": checkpoint \(24, 12\), expected \(24, 24\)"):
    load_clip(target)


def test_safetensors_with_missing_key_is_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  target = tmp_path / "ckpt"
  shutil.copytree(HF_TINY / "safetensors", target)
  state = load_file(str(target / "model.safetensors"))
  del state["text_model.final_layer_norm.weight"]
  save_file(state, str(target / "model.safetensors"))
  with pytest.raises(CheckpointMismatchError, match="missing.*text_model/final_layer_norm/scale"):
    load_clip(target)


def test_config_and_path_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    resolve_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="none of flax_model.msgpack"):
    resolve_checkpoint(tmp_path)
  with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
    load_clip("nobody/no-such-clip-model")
  bad = tmp_path / "bad"
  shutil.copytree(HF_TINY / "msgpack", bad)
  config = json.loads((bad / "config.json").read_text())
  config["vision_config"]["num_attention_heads"] = 5
  (bad / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="hidden_size=32 is not divisible by num_attention_heads=5"):
    load_clip(bad)
  # A config.json that is not an object, or not JSON, or far too large, is named, not a crash.
  for text, error in (("[1, 2]", r"config\.json: not a JSON object of CLIP's config$"),
                      ('{"vision_config": ', r"config\.json: not a readable JSON config \(Expecting value"),
                      (" " * (64 << 20), r"config\.json: not a readable JSON config \(67108864 bytes, over")):
    (bad / "config.json").write_text(text)
    with pytest.raises(ValueError, match=error):
      load_clip(bad)


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("preset", ["vit_b32", "vit_b16", "vit_l14", "vit_l14_336"])
def test_real_architectures_match_transformers_parameter_tree(preset):
  """Our tree for each released CLIP equals transformers' own, renamed (no weights are needed)."""
  torch = pytest.importorskip("torch")
  from transformers import CLIPConfig, CLIPModel
  ours = {"vit_b32": clip_config.vit_b32, "vit_b16": clip_config.vit_b16,
          "vit_l14": clip_config.vit_l14, "vit_l14_336": lambda: clip_config.vit_l14(336)}[preset]()
  hf_config = CLIPConfig(**ours.to_hf_dict())
  with torch.device("meta"):
    hf_model = CLIPModel(hf_config)
  expected = pytorch_to_flax({k: np.broadcast_to(np.float32(0), tuple(v.shape))
                              for k, v in hf_model.state_dict().items()})
  ours_parsed = clip_config.CLIPConfig.from_hf_dict(hf_config.to_dict())
  assert ours_parsed == ours
  got = clip_param_shapes(CLIP(ours_parsed))
  flat_got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(got, sep="/").items()}
  flat_expected = {k: np.shape(v) for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
  assert flat_got == flat_expected


def test_saved_checkpoint_reads_back_in_transformers(tmp_path):
  """save_clip writes what transformers loads, and both compute the same features."""
  torch = pytest.importorskip("torch")
  from transformers import CLIPModel
  config = clip_config.tiny(image_size=48, patch_size=16, width=64, layers=2, projection_dim=24,
                            vocab_size=500)
  model = CLIP(config)
  params = jax.tree.map(np.asarray, init_clip_params(model, jax.random.PRNGKey(3)))
  save_clip(tmp_path, config, params, formats=("safetensors",))
  hf_model = CLIPModel.from_pretrained(tmp_path).eval()
  rng = np.random.default_rng(1)
  pixels = rng.standard_normal((2, 48, 48, 3)).astype(np.float32)
  ids = rng.integers(3, 499, size=(2, 12)).astype(np.int32)
  with torch.no_grad():
    hf_image = hf_model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    hf_text = hf_model.get_text_features(input_ids=torch.from_numpy(ids).long())
  hf_image = getattr(hf_image, "pooler_output", hf_image)
  hf_text = getattr(hf_text, "pooler_output", hf_text)
  assert_rel_close(model.apply({"params": params}, pixels, method=CLIP.encode_image), hf_image.numpy())
  assert_rel_close(model.apply({"params": params}, ids, method=CLIP.encode_text), hf_text.numpy())


# ----------------------------------------------------------------------------- tokenizer

# Ids from OpenAI's own tokenizer (clip/simple_tokenizer.py with bpe_simple_vocab_16e6), as the
# official DFER-CLIP code tokenizes its prompts: 8 context placeholders, then the class text.
OPENAI_IDS = {
    "X X X X X X X X a smiling mouth, raised cheeks, wrinkled eyes, and arched eyebrows.":
        [49406, 343, 343, 343, 343, 343, 343, 343, 343, 320, 9200, 4932, 267, 6027, 23019, 267, 22201,
         912, 3095, 267, 537, 516, 2146, 19923, 269, 49407],
    "X X X X happiness.": [49406, 343, 343, 343, 343, 5096, 269, 49407],
    "an expression of disappointment.": [49406, 550, 11357, 539, 23884, 269, 49407],
    "one side of its mouth raised, one eyebrow lower and one raised, narrowed eyes, and a raised chin.":
        [49406, 637, 1145, 539, 902, 4932, 6027, 267, 637, 34250, 4909, 537, 637, 6027, 267, 2977, 22615,
         3095, 267, 537, 320, 6027, 8979, 269, 49407],
    "a downturned mouth, lowered eyebrows, narrowed eyes, and a sighing face.":
        [49406, 320, 1833, 3771, 4932, 267, 34968, 19923, 267, 2977, 22615, 3095, 267, 537, 320, 36303,
         519, 1710, 269, 49407],
}


def test_tokenizer_reproduces_openai_ids(clip_tokenizer_dir):
  tokenizer = load_tokenizer(clip_tokenizer_dir)
  texts = list(OPENAI_IDS)
  ids, eot = tokenize(tokenizer, texts)
  assert ids.shape == (len(texts), 77) and ids.dtype == np.int32 and eot.dtype == np.int32
  for row, text in enumerate(texts):
    expected = OPENAI_IDS[text]
    assert ids[row, :len(expected)].tolist() == expected
    assert not ids[row, len(expected):].any()  # zero padding, as clip.tokenize
    assert eot[row] == len(expected) - 1
  np.testing.assert_array_equal(eot, eot_positions(ids, 2))  # the argmax rule finds the same token


def test_tokenizer_refuses_overlong_text(clip_tokenizer_dir):
  tokenizer = load_tokenizer(clip_tokenizer_dir)
  with pytest.raises(ValueError, match="text 1 is .* tokens long, more than the context of 77"):
    tokenize(tokenizer, ["fine.", "word " * 80])


def test_tokenizer_directory_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab.json, merges.txt"):
    load_tokenizer(tmp_path)
