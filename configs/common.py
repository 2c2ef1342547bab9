"""What every config shares: the official DFER-CLIP recipe, and the ``:key=value`` argument parser.

Configs are data (ml_collections). ``main.py`` loads them with ``lock_config=True``, so a mistyped
``--config.x=y`` fails loudly. Every key has its default here, once.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from dferclip_jax.data import datasets


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``"fold=3,variant=B/16"`` -> typed values, each typed like its default; unknown keys fail."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected key=value with key in {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={raw!r}: expected true or false")
      values[key] = raw.lower() in ("true", "1")
    elif isinstance(default, int):
      try:
        values[key] = int(raw)
      except ValueError:
        raise ValueError(f"config argument {key}={raw!r}: expected an integer") from None
    elif isinstance(default, float):
      values[key] = float(raw)
    else:
      values[key] = raw
  return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
  """The official recipe (DFER-CLIP's main.py and train_*.sh), dataset-independent parts."""
  c = ml_collections.ConfigDict()
  c.dataset = ""               # a name of the dataset table (dferclip_jax/data/datasets.py)
  c.fold = 0                   # 1..num_folds; 0 for single-split datasets
  c.class_names = ()           # in label order; filled per dataset

  c.data = ml_collections.ConfigDict()
  c.data.source = "lists"      # "lists" (frame folders + annotation lists) or "tfds"
  c.data.train_list = ""
  c.data.test_list = ""
  c.data.root = config_dict.placeholder(str)       # root of relative paths in the lists
  c.data.path_map = ()         # ("old_prefix=new_prefix", ...) for published absolute paths
  c.data.on_bad_clip = "error"  # or "skip": skipped clips are counted and listed
  # A folder on two lines of one list: "error" names both lines; "warn" logs them, keeps both.
  c.data.duplicate_clips = "error"
  c.data.val_fraction = 0.0    # > 0: stratified hold-out of the train list; best is chosen on it
  c.data.tfds_name = config_dict.placeholder(str)  # e.g. "dfew"
  c.data.tfds_data_dir = config_dict.placeholder(str)
  c.data.tfds_train_split = "train"
  c.data.tfds_test_split = "test"
  c.data.augmentation = "none"  # one of datasets.AUGMENTATIONS
  c.data.num_frames = 16
  c.data.synthetic = ml_collections.ConfigDict()  # used by dataset="synthetic" only

  c.model = ml_collections.ConfigDict()
  c.model.clip = "openai/clip-vit-base-patch32"    # HF hub id or local directory; "" = random init
  c.model.clip_arch = ml_collections.ConfigDict()  # architecture for random init (clip="")
  c.model.tokenizer = config_dict.placeholder(str)  # default: the CLIP checkpoint's own
  c.model.n_ctx = 8
  c.model.class_specific = True
  c.model.class_token_position = "end"
  c.model.temporal_layers = 1
  c.model.temporal_heads = 8
  c.model.temporal_dim_head = 64
  c.model.temporal_mlp_dim = 1024
  c.model.temporal_pooling = "transformer"  # the official model; "mean" = frames averaged (ablation)
  c.model.text_type = "class_descriptor"  # class_names | class_names_with_context | class_descriptor
  c.model.class_texts_file = config_dict.placeholder(str)  # one line per class, overrides text_type
  c.model.normalize_input = False  # the official loader feeds [0, 1] pixels without CLIP mean/std
  # Start from a trained model instead of CLIP (fine-tuning): an official .pth, a model directory,
  # or WORKDIR:best|latest|STEP. Its architecture, weights and prompts replace config.model's.
  c.init_checkpoint = config_dict.placeholder(str)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.milestones = (30, 40)  # epochs; lr *= gamma at each
  c.optim.gamma = 0.1
  # Regexes over '/'-joined param paths; params in no group are frozen (the text tower, the
  # token embeddings, logit_scale).
  c.optim.groups = ml_collections.ConfigDict(dict(
      temporal="temporal/.*",
      image_encoder="clip/(vision_model|visual_projection)/.*",
      prompt_learner="prompt_learner/.*",
  ))
  c.optim.lr = ml_collections.ConfigDict(dict(temporal=1e-2, image_encoder=1e-5, prompt_learner=1e-3))
  c.label_smoothing = 0.0

  c.batch_size = 48             # global, across all devices and hosts
  c.eval_batch_size = 48
  c.num_epochs = 50
  c.max_steps = config_dict.placeholder(int)  # stop after this many steps (smoke runs)
  c.log_every = 10
  c.eval_every_epochs = 1
  c.checkpoint_every = 500      # steps; also at every evaluation and at the end
  # SIGTERM/Ctrl-C: stop at the same step everywhere, save there, exit 75 (requeue); a stop still
  # running this many seconds after the signal exits at once (README "Preemption").
  c.preemption_timeout_s = 50.0
  c.best_metric = "eval/uar"    # the official code keeps the best WAR; the papers report UAR too
  c.eval_num_clips = 1          # 1 = the official single centred clip per video
  c.zeroshot_template = "{}"    # --mode=zeroshot prompts: template.format(class text)
  c.seed = 1
  c.dtype = "float32"           # matmul dtype: float32 or bfloat16 (params stay float32)
  c.remat = False
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.num_devices = 0             # use the first N devices of each host's view (0 = all of them)
  c.shard_min_size = 2 ** 16    # params smaller than this many elements stay replicated
  c.progress_bars = True
  return c


def dataset_config(name: str, fold: int = 0) -> ml_collections.ConfigDict:
  """The base recipe on a dataset of the table (``data/datasets.py``): its classes, augmentation,
  and the lists ``cli.prepare`` writes (``annotations/<name>/set_<k>_*.txt`` or ``train/test.txt``)."""
  d = datasets.get(name)
  if not d.has_fold(fold):
    folds = f"folds 1..{d.num_folds}" if d.num_folds else "one train/test split (fold=0)"
    raise ValueError(f"configs/{name}.py: fold={fold}, but {name.upper()} has {folds}")
  split_fold = fold if d.num_folds else None
  c = base_config()
  c.dataset = name
  c.fold = fold
  c.class_names = d.class_names
  c.data.train_list = d.default_list(split_fold, "train")
  c.data.test_list = d.default_list(split_fold, "test")
  c.data.tfds_train_split = datasets.tfds_split(split_fold, "train")
  c.data.tfds_test_split = datasets.tfds_split(split_fold, "test")
  c.data.augmentation = d.augmentation
  return c


def add_openset(c: ml_collections.ConfigDict, hesp_dataset: str, method: str = "hesp") -> ml_collections.ConfigDict:
  """The open-set sections (``--mode=openset``): HESP's protocol and its method's recipe, as its
  official code (HESP_main.py, core/train.py) sets them."""
  c.openset = ml_collections.ConfigDict()
  c.openset.hesp_dataset = hesp_dataset  # whose 20 known-class splits: AFEW | MAFW | DFEW
  c.openset.splits = ()                  # split indices to run (empty: all 20)
  c.openset.method = method              # hesp | dferclip_msp | zeroshot_clip
  # Which clips: "data_lists" (config.data.train_list/test_list, e.g. a MAFW fold) or "hesp_mafw"
  # (HESP's own MAFW lists, 4,088 / 1,022 clips, resolved under config.data.root).
  c.openset.clips = "data_lists"
  # The class words in HESP's prompts: "hesp" (HESP's: Angry, Happy, Sad, ...) or "names"
  # (config.class_names: anger, happiness, sadness, ...).
  c.openset.class_words = "hesp"
  if method == "zeroshot_clip":  # CLIP's zero-shot prompts are class names; DFER-CLIP keeps its texts
    c.model.text_type = "class_names"

  c.hesp = ml_collections.ConfigDict()
  c.hesp.n_ctx = 16
  c.hesp.patch_size = 56                 # pixels at 224; scale it with the image size
  c.hesp.num_frames = 8
  c.hesp.batch_size = 64
  c.hesp.epochs = 100
  c.hesp.lr = 1e-2                       # SGD for the unknown prompts and the radius
  c.hesp.lr_context = 1e-2               # the class contexts (the official code never trains them)
  c.hesp.momentum = 0.9
  c.hesp.weight_decay = 1e-4
  c.hesp.milestones = (30, 60, 90, 120)
  c.hesp.normalized_step = 50.0          # the patch / unknown-prompt step: p -= 50 g / ||g||
  c.hesp.temperature = 1.0               # of the open-set logits in the ARPL loss
  c.hesp.weight_pl = 0.1                 # weight of the radius margin term
  c.hesp.contrastive_temperature = 0.5
  c.hesp.eval_every_epochs = 1
  # True: reproduce HESP's official code where it departs from its method (contexts not trained,
  # prompts paired alphabetically, frame 0 for short clips, resize before the crop, ceil(N/batch)
  # steps an epoch with the partial last batch, frames in string order, the OpenCV contour chain
  # for the attention peak, its AUROC and OSCR beside ours); see docs/openset.md. False: the
  # corrected method.
  c.hesp.official = False
  if method == "hesp":  # the baselines keep the dataset's DFER-CLIP recipe (16 frames, its augmentation)
    c.data.augmentation = "mafw"         # HESP trains with random sized crop + flip
    c.data.num_frames = c.hesp.num_frames
  c.zeroshot_template = "a photo of a face showing {}"
  return c
