"""HESP's open-set losses, as pure functions (as its code computes them).

* Reciprocal points: each known class k has a point c_k (in HESP, the image features of a
  learnable "unknown" visual prompt). The open-set logit of class k is
  ``||x - c_k||^2 / D - x . c_k``: far from the class's reciprocal point means "class k".
* ARPL-style loss: cross-entropy on those logits (over a temperature) plus ``weight_pl`` x a
  margin-ranking term that pulls the squared distance to the own reciprocal point under a
  learnable radius: ``mean(max(0, d - radius + 1))`` with ``d = mean((x - c_y)^2)``.
* Supervised contrastive loss (HESP's ``ConLoss``): on L2-normalised features at temperature 0.5,
  each anchor's mean log-probability over its positives (other clips of its class), against all
  other clips; anchors without positives are left out; scaled by the temperature.

Each loss takes an optional ``mask`` [N] (False: a padding clip of a partial last batch, see
``hesp_train``): the loss is then the loss of the real clips alone, as if the batch held only them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def reciprocal_logits(features, points):
  """features [N, D], points [K, D] -> [N, K] = squared distance / D - dot product."""
  features = features.astype(jnp.float32)
  points = points.astype(jnp.float32)
  dot = features @ points.T
  sq = (jnp.sum(features ** 2, -1, keepdims=True) - 2 * dot + jnp.sum(points ** 2, -1)[None])
  return sq / features.shape[-1] - dot


def masked_mean(values, mask=None):
  """Mean of ``values`` [N] over the clips where ``mask`` is True (all when None)."""
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits, labels, mask=None):
  return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), mask)


def arpl_loss(logits, features, points, labels, radius, *, temperature: float = 1.0,
              weight_pl: float = 0.1, mask=None):
  ce = cross_entropy(logits / temperature, labels, mask)
  own = points[labels]
  distance = jnp.mean((features.astype(jnp.float32) - own) ** 2, axis=1)
  margin = masked_mean(jnp.maximum(0.0, distance - radius + 1.0), mask)  # MarginRankingLoss(radius, d, +1)
  return ce + weight_pl * margin


def supervised_contrastive_loss(features, labels, *, temperature: float = 0.5,
                                scale_by_temperature: bool = True, mask=None):
  n = features.shape[0]
  f = features.astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  logits = f @ f.T / temperature
  # The row maximum is a constant of each row's log-softmax: any one gives the same loss.
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  not_self = 1.0 - jnp.eye(n)
  if mask is not None:  # padding clips are neither anchors nor in any anchor's contrast set
    real = mask.astype(jnp.float32)
    not_self = not_self * real[:, None] * real[None, :]
  positives = (labels[:, None] == labels[None, :]).astype(jnp.float32) * not_self
  denominator = jnp.sum(jnp.exp(logits) * not_self, axis=1, keepdims=True)
  # A row with nothing to contrast (a padding clip, a batch of one) has no positive either and
  # is left out below; a finite log keeps its zero gradient from turning into 0 * inf = NaN.
  log_denominator = jnp.log(jnp.where(denominator > 0, denominator, 1.0))
  log_prob = logits - log_denominator
  count = jnp.sum(positives, axis=1)
  per_anchor = jnp.sum(log_prob * positives, axis=1) / jnp.maximum(count, 1.0)
  has = count > 0
  loss = -jnp.sum(jnp.where(has, per_anchor, 0.0)) / jnp.maximum(jnp.sum(has), 1)
  return loss * temperature if scale_by_temperature else loss
