r"""Convert an official DFER-CLIP checkpoint (.pth) into this project's model checkpoint.

  python -m dferclip_jax.cli.convert_official --checkpoint=DFEW-set1-model_best.pth \
      --out=converted/dfew1 --dataset=dfew

torch is not needed: the file is read by a restricted unpickler that runs no code from it. The
output (model.json + Orbax variables) is what `main.py --mode=evaluate/predict --checkpoint=DIR`
restores.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from dferclip_jax import export, official
from dferclip_jax.data import datasets
from dferclip_jax.models.dferclip import model_kwargs
from dferclip_jax.models.prompts import POSITIONS


def _define_flags() -> None:
  """Flags exist only when this runs as a program: importing convert() defines none (no clash
  with other tools' --dataset when both are imported, e.g. by the tests)."""
  flags.DEFINE_string("checkpoint", None, "The official .pth file.", required=True)
  flags.DEFINE_string("out", None, "New directory for the converted checkpoint.", required=True)
  flags.DEFINE_enum("class_token_position", "end", POSITIONS,
                    "The --class-token-position the checkpoint was trained with.")
  flags.DEFINE_enum("dataset", None, datasets.NATIVE,
                    "Records that dataset's class names (DFER-CLIP order) in model.json.")
  flags.DEFINE_list("class_names", None, "Class names in label order (instead of --dataset).")


def convert(checkpoint: str, out: str, class_token_position: str = "end",
            class_names: list[str] | None = None) -> dict:
  model, variables = official.load_checkpoint(checkpoint, class_token_position)
  names = list(class_names or [])
  if names and len(names) != model.num_classes:
    raise ValueError(f"{len(names)} class names given, but {checkpoint} has {model.num_classes} classes")
  export.save_model(out, model, variables, class_names=names, source=os.path.abspath(checkpoint))
  summary = model_kwargs(model)
  clip = summary.pop("clip_config")
  summary["clip"] = {"vision": clip["vision_config"], "text": clip["text_config"],
                     "projection_dim": clip["projection_dim"]}
  summary["class_names"] = names
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  names = f.class_names or (list(datasets.get(f.dataset).class_names) if f.dataset else None)
  summary = convert(f.checkpoint, f.out, f.class_token_position, names)
  print(json.dumps(summary, indent=2))
  print(f"wrote {os.path.abspath(f.out)}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
