"""The device mesh, how arrays are laid out on it, and global batches from host-local ones.

Two mesh axes: ``data`` (batch parallelism) and ``fsdp`` (the batch is split over it too, and
large parameters are sharded over it, ZeRO-3 style; XLA inserts the all-gathers). Everything
else is replicated. ``jax.jit`` with these shardings is what ``pjit`` became.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves ``-1`` (the remaining devices) and checks the product against the device count."""
  unknown = sorted(set(mesh_config) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"config.mesh: unknown axes {unknown}; the axes are {list(MESH_AXES)}")
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {free}")
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{axis}={size}: must be a positive size or -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh={dict(mesh_config)}: {num_devices} devices are not divisible "
                       f"by the fixed axes' product {fixed}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"config.mesh={dict(mesh_config)} needs {math.prod(sizes.values())} devices, "
                     f"but {num_devices} are available")
  return sizes


def make_mesh(mesh_config: Mapping[str, int], devices=None, num_devices: int = 0) -> Mesh:
  """The mesh over ``devices`` (default: all; ``num_devices`` > 0 takes the first N)."""
  devices = jax.devices() if devices is None else devices
  if num_devices:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"config.num_devices={num_devices}: {len(devices)} devices are available")
    devices = devices[:num_devices]
  sizes = mesh_shape(mesh_config, len(devices))
  # Auto axes: linen layers and jit in/out shardings, without explicit-sharding types.
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """Shards the largest axis divisible by the fsdp size, for arrays of at least ``min_size``."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree, mesh: Mesh, min_size: int):
  """NamedShardings for every leaf (arrays or ShapeDtypeStructs) by ``param_spec``."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp, min_size)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh, field: str = "config.batch_size") -> int:
  """-> the per-host batch; errors (before any compilation) when the batch does not divide."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch <= 0 or global_batch % shards:
    raise ValueError(f"{field}={global_batch} is not divisible by the data-parallel size "
                     f"{shards} (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")
  if global_batch % jax.process_count():
    raise ValueError(f"{field}={global_batch} is not divisible by the {jax.process_count()} hosts")
  return global_batch // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local batch slices -> global arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def put_global(tree, shardings):
  """Host numpy values present on every host -> global arrays with the given shardings."""
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree, shardings)


def describe_sharding(tree) -> dict[str, Any]:
  """'/'-joined path -> PartitionSpec string of every sharded (non-replicated) leaf."""
  from flax import traverse_util
  out = {}
  for path, x in traverse_util.flatten_dict(tree).items():
    spec = getattr(getattr(x, "sharding", None), "spec", None)
    if spec is not None and any(s is not None for s in spec):
      out["/".join(map(str, path))] = str(spec)
  return out
