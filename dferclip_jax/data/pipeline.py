"""The tf.data input pipeline: batches of uint8 clips for training and (padded) evaluation.

Training is an infinite stream of clip *positions* ``p = 0, 1, 2, ...`` over all hosts. Global
batch ``s`` holds positions ``[s * G, (s + 1) * G)`` with ``G = batch_size * process_count``; host
``h`` reads only its slice ``[s * G + h * b, s * G + (h + 1) * b)``. Position ``p`` is example
``perm_e(p mod n)`` of epoch ``e = p // n``, where ``perm_e`` is a full permutation of the ``n``
clips drawn from (seed, e) (``tf.random.experimental.index_shuffle``: shuffle before repeat, every
clip once per epoch, no shuffle buffer). The clip's frame sampling and augmentation are drawn from
(seed, p); ``seeds`` names every such stream. Nothing depends on what was read before, so
``start_step=k`` yields exactly the batches an uninterrupted run yields from step ``k`` without
replaying anything, and the global batch at a step is the same for any number of hosts.

Evaluation walks the clips in source order: global batch ``s`` holds positions ``[s * G, (s + 1)
* G)`` split across hosts the same way; positions ``>= n`` are padding (zeros, ``mask`` False,
``index`` -1). Every host runs ``num_eval_batches`` batches and each clip is counted exactly once.

Decoding and augmentation run in a parallel, order-preserving ``map``; batches are prefetched.
A read or decode failure stops iteration with ``ClipDataError`` naming the list line (or TFDS
record) and the frame file. Given a ``bad`` dict (``on_bad_clip='skip'``), the clip at fault is
recorded there with the reason and the stream goes on from the same batch: in training each
skipped clip's positions take the next clip (in source order) that is not skipped, in evaluation
it is masked out. The stream stays a pure function of (seed, position, skipped clips), so a run
that resumes with the skipped clips it had checkpointed sees exactly the batches of a run that
was never stopped.
"""

from __future__ import annotations

import math
from typing import Collection, Iterator, MutableMapping, Sequence

from absl import logging

import numpy as np
import tensorflow as tf

from dferclip_jax.data import augment
from dferclip_jax.data import sampling
from dferclip_jax.data import seeds
from dferclip_jax.data import sources as sources_lib
from dferclip_jax.data.records import ClipRecord
from dferclip_jax.data.sources import ClipDataError, FolderSource, TfdsSource

AUGMENTATIONS = augment.KINDS
Source = FolderSource | TfdsSource | Sequence[ClipRecord]


def _hide_accelerators_from_tf() -> None:
  # TensorFlow only feeds the input: it must not claim GPU memory that JAX needs.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised (someone used TF first): nothing to do
    pass


_hide_accelerators_from_tf()


def as_source(source: Source) -> FolderSource | TfdsSource:
  """Sources pass; a list of ``ClipRecord`` becomes a ``FolderSource``, which lists every folder
  on each call: what reads a list more than once (the trainer, evaluation every epoch) holds a
  built source (``data_setup.DataBundle``, ``sources.open_annotation_list``)."""
  if isinstance(source, (FolderSource, TfdsSource)):
    return source
  return FolderSource(source)


def tfds_sources(name: str, train_split: str | None, test_split: str, *,
                 data_dir: str | None = None, class_names: Sequence[str] | None = None
                 ) -> tuple[TfdsSource | list, TfdsSource]:
  """Opens a built TFDS dataset's train split (None: not needed, gives []) and test split.

  ``class_names``: the configured order; the dataset's ClassLabel names must equal it.
  """
  splits = [TfdsSource(name, s, data_dir=data_dir) if s else [] for s in (train_split, test_split)]
  for split in splits:
    if class_names is not None and split != [] and split.class_names != tuple(class_names):
      raise ValueError(f"TFDS {name}:{split.split} has classes {split.class_names}, but the config "
                       f"names {tuple(class_names)}: a different order would permute the labels")
  return splits[0], splits[1]


# ---------------------------------------------------------------------------------------------
# Positions, examples and seeds: pure functions of (seed, position).
# ---------------------------------------------------------------------------------------------


def host_positions(step, batch_size: int, process_index: int = 0, process_count: int = 1):
  """Global stream positions of this host's slice of global batch ``step`` (int64 ``[b]``)."""
  step = tf.cast(step, tf.int64)
  return (step * batch_size * process_count + process_index * batch_size
          + tf.range(batch_size, dtype=tf.int64))


def _global_position(q, batch_size: int, process_index: int, process_count: int):
  """Host-local counter ``q`` (``step * b + j``) -> global stream position."""
  step, j = q // batch_size, q % batch_size
  return step * batch_size * process_count + process_index * batch_size + j


def epoch_batch_positions(q, batch_size: int, process_index: int, process_count: int,
                          num_examples: int):
  """``epoch_batches`` streams (PyTorch's ``DataLoader(drop_last=False)``): host-local counter
  ``q`` -> (global stream position, real). An epoch is ``ceil(n / G)`` global batches, the last
  one partial; its missing slots repeat the epoch's first positions and are not real."""
  q = tf.cast(q, tf.int64)
  global_batch = batch_size * process_count
  per_epoch = -(-num_examples // global_batch)
  step, j = q // batch_size, q % batch_size
  epoch, k = step // per_epoch, step % per_epoch
  within = k * global_batch + process_index * batch_size + j
  return epoch * num_examples + within % num_examples, within < num_examples


def example_at(position, num_examples: int, seed: int) -> tf.Tensor:
  """The example index at a training stream position: epoch permutation, shuffle before repeat.

  ``position``: a scalar or a vector of positions.
  """
  position = tf.cast(position, tf.int64)
  if position.shape.rank:
    return tf.map_fn(lambda p: example_at(p, num_examples, seed), position)
  epoch = position // num_examples
  key = seeds.sub(seeds.key(seed, seeds.Root.PERMUTATION), epoch)
  return tf.random.experimental.index_shuffle(position % num_examples, key,
                                              tf.constant(num_examples - 1, tf.int64))


def clip_seed(position, seed: int) -> tf.Tensor:
  """The stateless seed ([2] int64) of all random draws for the clip at ``position``: the
  streams of ``seeds.Clip`` hang under it."""
  return seeds.sub(seeds.key(seed, seeds.Root.CLIP), tf.cast(position, tf.int64))


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Batches every host runs in one evaluation pass (the last one padded)."""
  return math.ceil(num_examples / (batch_size * process_count))


def substitutes(num_examples: int, skipped: Collection[int]) -> np.ndarray:
  """Example -> the example read in its place: itself, or for a skipped clip the next clip in
  source order (wrapping around) that is not skipped."""
  table = np.arange(num_examples, dtype=np.int64)
  skipped = set(int(e) for e in skipped)
  if not skipped:
    return table
  if len(skipped) >= num_examples:
    raise ClipDataError(f"every one of the {num_examples} clips was skipped as unreadable")
  for e in sorted(skipped):
    k = (e + 1) % num_examples
    while k in skipped:
      k = (k + 1) % num_examples
    table[e] = k
  return table


# ---------------------------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------------------------


def train_dataset(source: Source, *, augmentation: str, batch_size: int, image_size: int,
                  num_frames: int = 16, seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1, prefetch: int = 2,
                  short_clips: str = "edge", skipped: Collection[int] = (),
                  epoch_batches: bool = False) -> tf.data.Dataset:
  """The training stream from ``start_step`` on, as a tf.data.Dataset (see ``train_batches``);
  ``skipped`` clips are replaced as ``substitutes`` says."""
  source = as_source(source)
  _check_common(batch_size, image_size, num_frames, process_index, process_count)
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f"augmentation={augmentation!r}: expected one of {AUGMENTATIONS}")
  if start_step < 0:
    raise ValueError(f"start_step={start_step}: must be >= 0")
  n = len(source)
  replacement = tf.constant(substitutes(n, skipped))

  def position(q):
    if epoch_batches:
      return epoch_batch_positions(q, batch_size, process_index, process_count, n)
    return _global_position(q, batch_size, process_index, process_count)

  def load(p, real=None):
    example = tf.gather(replacement, example_at(p, n, seed))
    key = clip_seed(p, seed)
    count, label, handle = source.fetch(example)
    indices = sampling.train_indices(count, seeds.sub(key, seeds.Clip.SAMPLING),
                                     num_segments=num_frames, short_clips=short_clips)
    frames = sources_lib.decode_frames(*source.frames(handle, indices))
    video = augment.augment_clip_uint8(frames, augmentation, image_size, key)
    video = tf.ensure_shape(video, [num_frames, image_size, image_size, 3])
    return {"video": video, "label": label} if real is None else {
        "video": video, "label": label, "mask": real}

  ds = tf.data.Dataset.range(start_step * batch_size, np.iinfo(np.int64).max)
  ds = ds.map(position).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  return ds.prefetch(prefetch).with_options(_options())


def eval_dataset(source: Source, *, batch_size: int, image_size: int, num_frames: int = 16,
                 process_index: int = 0, process_count: int = 1, num_clips: int = 1,
                 prefetch: int = 2, short_clips: str = "edge", skipped: Collection[int] = (),
                 start_batch: int = 0) -> tf.data.Dataset:
  """One evaluation pass over the source as a tf.data.Dataset (see ``eval_batches``), from batch
  ``start_batch`` on; ``skipped`` clips are not read and count as padding."""
  source = as_source(source)
  _check_common(batch_size, image_size, num_frames, process_index, process_count)
  if num_clips < 1:
    raise ValueError(f"num_clips={num_clips}: expected at least 1")
  n = len(source)
  steps = num_eval_batches(n, batch_size, process_count)
  shape = ([num_clips] if num_clips > 1 else []) + [num_frames, image_size, image_size, 3]
  usable = np.ones(n, bool)
  usable[sorted(int(e) for e in skipped)] = False
  usable = tf.constant(usable)

  def load(q):
    p = _global_position(q, batch_size, process_index, process_count)
    valid = tf.logical_and(p < n, tf.gather(usable, tf.minimum(p, n - 1)))

    def clip():
      count, label, handle = source.fetch(p)
      video = test_clip(lambda indices: sources_lib.decode_frames(*source.frames(handle, indices)),
                        count, num_frames=num_frames, num_clips=num_clips, image_size=image_size,
                        short_clips=short_clips)
      return video, label

    def padding():
      return tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32)

    video, label = tf.cond(valid, clip, padding)
    return {"video": tf.ensure_shape(video, shape), "label": label, "mask": valid,
            "index": tf.where(valid, tf.cast(p, tf.int32), -1)}

  ds = tf.data.Dataset.range(start_batch * batch_size, steps * batch_size)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  return ds.prefetch(prefetch).with_options(_options())


def test_clip(decode, count, *, num_frames: int, num_clips: int, image_size: int,
              short_clips: str = "edge") -> tf.Tensor:
  """A clip as evaluation sees it: the test sampler's frames, decoded by ``decode(indices) -> uint8
  [len(indices), H, W, 3]``, resized to ``image_size``. -> uint8 ``[T, S, S, 3]`` (``[K, T, S, S,
  3]`` for ``num_clips = K > 1``). Evaluation and ``predict`` both read clips through it."""
  indices = sampling.test_indices(count, num_segments=num_frames, num_clips=num_clips,
                                  short_clips=short_clips)
  video = augment.resize_clip_uint8(decode(tf.reshape(indices, [-1])), image_size)
  shape = ([num_clips] if num_clips > 1 else []) + [num_frames, image_size, image_size, 3]
  return tf.reshape(video, shape)


# ---------------------------------------------------------------------------------------------
# Iterators of numpy batches: what the trainer consumes.
# ---------------------------------------------------------------------------------------------


def train_batches(source: Source, *, augmentation: str, batch_size: int, image_size: int,
                  num_frames: int = 16, seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1, short_clips: str = "edge",
                  bad: MutableMapping[int, str] | None = None,
                  epoch_batches: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of this host's training batches from ``start_step`` on.

  Each batch: ``{"video": uint8 [batch_size, num_frames, image_size, image_size, 3],
  "label": int32 [batch_size]}``; ``batch_size`` is per host. Deterministic for a seed; batch
  ``k`` is the same whether the run started at 0 or at ``start_step <= k``. ``short_clips``:
  how clips with fewer frames than ``num_frames`` are filled (``sampling.SHORT_CLIPS``).

  ``bad``: None stops at an unreadable clip; a dict (example -> reason) skips it, records it there
  and goes on (clips already in it are skipped from the start).

  ``epoch_batches``: epochs of ``ceil(n / G)`` global batches, the last one partial and padded
  (``epoch_batch_positions``), each batch with ``"mask": bool [batch_size]`` (False for padding),
  as PyTorch's ``DataLoader(drop_last=False)`` reads an epoch; False (the default): the stream
  above, full batches across epoch ends.
  """
  source = as_source(source)
  n = len(source)

  def dataset(step):
    return train_dataset(source, augmentation=augmentation, batch_size=batch_size,
                         image_size=image_size, num_frames=num_frames, seed=seed, start_step=step,
                         process_index=process_index, process_count=process_count,
                         short_clips=short_clips, skipped=bad or (), epoch_batches=epoch_batches)

  def examples(step):
    positions = host_positions(step, batch_size, process_index, process_count)
    if epoch_batches:
      positions, _ = epoch_batch_positions(step * batch_size + tf.range(batch_size, dtype=tf.int64),
                                           batch_size, process_index, process_count, n)
    return [int(e) for e in substitutes(n, bad or ())[example_at(positions, n, seed).numpy()]]

  return _explained(dataset, source, examples, start_step, "training", bad)


def eval_batches(source: Source, *, batch_size: int, image_size: int, num_frames: int = 16,
                 process_index: int = 0, process_count: int = 1, num_clips: int = 1,
                 short_clips: str = "edge",
                 bad: MutableMapping[int, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass of this host's evaluation batches: ``num_eval_batches(len(source), batch_size,
  process_count)`` of them, the last padded.

  Each batch: ``{"video": uint8 [b, T, H, W, 3]`` (``[b, num_clips, T, H, W, 3]`` when
  ``num_clips > 1``), ``"label": int32 [b], "mask": bool [b]`` (False for padding),
  ``"index": int32 [b]}`` (position in the source, -1 for padding and skipped clips).

  ``bad``: as in ``train_batches``; a skipped clip is masked out (``mask`` False).
  """
  source = as_source(source)
  n = len(source)

  def dataset(step):
    return eval_dataset(source, batch_size=batch_size, image_size=image_size,
                        num_frames=num_frames, process_index=process_index,
                        process_count=process_count, num_clips=num_clips,
                        short_clips=short_clips, skipped=bad or (), start_batch=step)

  def examples(step):
    positions = host_positions(step, batch_size, process_index, process_count).numpy()
    return [int(p) for p in positions if p < n and int(p) not in (bad or {})]

  return _explained(dataset, source, examples, 0, "evaluation", bad)


def _explained(dataset, source, examples, first_step: int, what: str,
               bad: MutableMapping[int, str] | None = None):
  """Yields numpy batches of ``dataset(step)`` (the stream from ``step`` on); turns a failed read
  into an error that names the broken file, or, given ``bad``, records the broken clips there and
  goes on from the same batch without them.

  tf.data keeps the order of elements and of their errors, so a failure belongs to the batch
  being requested; its clips are known from the step alone and are checked one by one.
  """
  iterator = dataset(first_step).as_numpy_iterator()
  step = first_step
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as err:
      clips = examples(step)
      found = {}
      for example in dict.fromkeys(clips):
        try:
          source.check_clip(example)
        except ClipDataError as broken:
          if bad is None:
            raise ClipDataError(f"{broken} (while reading {what} batch {step})") from err
          found[example] = str(broken)
      if not found or all(e in bad for e in found):  # nothing new to skip: going on would loop
        listed = "; ".join(source.describe(e) for e in clips[:4])
        raise ClipDataError(f"reading {what} batch {step} failed: {err.message.strip()} "
                            f"(clips {listed}{', ...' if len(clips) > 4 else ''})") from err
      for example, reason in found.items():
        logging.warning("skipping an unreadable %s clip (config.data.on_bad_clip='skip'): %s", what,
                        reason)
        bad[example] = reason
      iterator = dataset(step).as_numpy_iterator()  # the same batch again, without those clips
      continue
    yield batch
    step += 1


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Parallelism comes from decoding many clips at once; one thread per op avoids oversubscription.
  options.threading.max_intra_op_parallelism = 1
  return options


def _check_common(batch_size, image_size, num_frames, process_index, process_count) -> None:
  for name, value in (("batch_size", batch_size), ("image_size", image_size),
                      ("num_frames", num_frames), ("process_count", process_count)):
    if int(value) < 1:
      raise ValueError(f"{name}={value}: must be at least 1")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count})")
