"""Writes tests/fixtures/demo_model: the README demo's trained model (best checkpoint) as a model
directory, so the timeline tests run a model that really tells the demo's classes apart without
training it first.

  python main.py --config=configs/demo.py --workdir=workdirs/demo    # the README's main command
  python scripts/make_demo_model_fixture.py workdirs/demo
"""

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dferclip_jax import evaluation, export  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "demo_model"


def main(workdir: str) -> None:
  model, variables, names, source = evaluation.load_model_for_eval("best", workdir, None, 0)
  card = json.loads((Path(workdir) / export.MODEL_FILE).read_text())
  shutil.rmtree(OUT, ignore_errors=True)
  results = json.loads((Path(workdir) / "results.json").read_text())
  export.save_model(OUT, model, variables, class_names=names, class_texts=card.get("class_texts", ()),
                    source=f"README demo, best checkpoint ({source}); test UAR {results['best']['uar']:.2f}")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "workdirs/demo")
