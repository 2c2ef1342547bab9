"""The open-set scores of the baselines (dferclip_msp, zeroshot_clip): the maximum softmax
probability, not the maximum logit, ranks known against unknown clips (by hand on two cases
where the two rankings disagree)."""

import numpy as np
import pytest

from dferclip_jax.openset import experiment

# Known clip A: logits (3, 2.9, 0): the largest logit (3) but a split softmax,
#   max p = e^3 / (e^3 + e^2.9 + 1) = 20.09 / 39.26 = 0.512.
# Known clip B: (0, 6, 0): max p = e^6 / (e^6 + 2) = 0.995.
# Unknown clip U: (2, 0, 0): a smaller logit (2) but a peaked softmax, max p = e^2 / (e^2 + 2) = 0.787.
KNOWN = np.array([[3.0, 2.9, 0.0], [0.0, 6.0, 0.0]], np.float32)
UNKNOWN = np.array([[2.0, 0.0, 0.0]], np.float32)


@pytest.mark.parametrize("labels, softmax, expected", [
    # By the softmax: B (0.995) > U (0.787) > A (0.512). AUROC: 1 of the 2 (known, unknown) pairs
    # is ordered, 50. OSCR: the correctly classified known clips ranked above U, per pair: A and
    # B both correct (labels 0, 1) -> B only, 50; labels (0, 0): B is wrong, A is below U -> 0.
    ([0, 1], True, {"openset/acc": 100.0, "openset/auroc": 50.0, "openset/oscr": 50.0}),
    ([0, 0], True, {"openset/acc": 50.0, "openset/auroc": 50.0, "openset/oscr": 0.0}),
    # By the logits (HESP's own score): A (3) and B (6) are both above U (2): AUROC 100; OSCR
    # with labels (0, 0): A is correct and above U, 50.
    ([0, 1], False, {"openset/acc": 100.0, "openset/auroc": 100.0, "openset/oscr": 100.0}),
    ([0, 0], False, {"openset/acc": 50.0, "openset/auroc": 100.0, "openset/oscr": 50.0}),
])
def test_the_baselines_rank_by_the_maximum_softmax(labels, softmax, expected):
  scores = experiment.open_set_scores(KNOWN, UNKNOWN, np.array(labels), use_softmax=softmax)
  assert scores == pytest.approx(expected, abs=1e-9)


def test_saturated_softmaxes_still_rank_by_their_margin():
  """In float32 both softmaxes round to 1.0 (a tie, AUROC 50); their log-probabilities
  (-e^-40 vs -e^-30 after the 2-way log-sum-exp) keep the order: the known clip is more certain."""
  known = np.array([[40.0, 0.0]], np.float32)
  unknown = np.array([[30.0, 0.0]], np.float32)
  probs = np.exp(known) / np.exp(known).sum(1, keepdims=True)
  assert probs.max() == np.float32(1.0)  # the tie a plain softmax would give
  scores = experiment.open_set_scores(known, unknown, np.array([0]), use_softmax=True)
  assert scores["openset/auroc"] == 100.0
