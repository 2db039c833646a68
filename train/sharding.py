"""Meshes and shardings: where the state and each batch live.

The mesh is data in the config (`parallel.mesh = "data=-1"`: axis=size pairs, -1 takes the
devices left over). Every strategy shards the batch axis over `data`; they differ in the state:

- `dp`: the state is replicated on every device.
- `fsdp`: each parameter and optimizer-state array is split along its largest dimension that
  divides over `data` (rule: `fsdp_spec`); small arrays stay replicated. XLA gathers them for
  the forward pass and reduce-scatters the gradients.
- `pmap`: the classic form, `jax.pmap` of the step over the devices and `lax.pmean` of the
  gradients, inside one `jax.jit` (train/pmap.py); its state is replicated as under `dp`.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STRATEGIES = ("dp", "fsdp", "pmap")

# fsdp leaves arrays smaller than this replicated: splitting a bias saves nothing and costs a
# collective per step.
FSDP_MIN_SIZE = 2**12


def make_mesh(spec: str, devices=None) -> Mesh:
    """Builds a mesh from "axis=size,..." over `devices` (default: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        pairs = [part.split("=") for part in spec.split(",")]
        names = tuple(name.strip() for name, _ in pairs)
        sizes = [int(size) for _, size in pairs]
    except ValueError:
        raise ValueError(
            f"parallel.mesh={spec!r} is not 'axis=size,...' (e.g. 'data=-1' or 'data=8')") from None
    if names != ("data",):
        raise ValueError(f"parallel.mesh={spec!r}: only a 'data' axis is supported so far, "
                         f"e.g. 'data=-1' or 'data=8'")
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1 or known <= 0 or any(s < -1 or s == 0 for s in sizes):
        raise ValueError(f"parallel.mesh={spec!r} needs positive sizes and at most one -1")
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"parallel.mesh={spec!r} does not divide the {len(devices)} "
                             f"{devices[0].platform} devices found")
        sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) > len(devices):
        raise ValueError(f"parallel.mesh={spec!r} needs {math.prod(sizes)} devices but "
                         f"{len(devices)} {devices[0].platform} devices were found")
    if math.prod(sizes) < len(devices) and jax.process_count() > 1:
        raise ValueError(f"parallel.mesh={spec!r} leaves devices out, which a run of "
                         f"{jax.process_count()} processes cannot; use 'data=-1'")
    devices = devices[:math.prod(sizes)]  # a smaller mesh uses the first devices
    return Mesh(np.asarray(devices).reshape(sizes), names)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over `data`; the rest whole."""
    return NamedSharding(mesh, P("data"))


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown parallel.strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def fsdp_spec(shape: tuple[int, ...], axis_size: int) -> P:
    """Shards the largest dimension divisible by `axis_size`; replicates small arrays."""
    if math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    candidates = [d for d in range(len(shape)) if shape[d] % axis_size == 0]
    if not candidates:
        return P()
    dim = max(candidates, key=lambda d: shape[d])
    return P(*([None] * dim + ["data"]))


def state_sharding(state, mesh: Mesh, strategy: str = "dp"):
    """Where every leaf of the (checkpointed) state lives under `strategy`."""
    check_strategy(strategy)
    if strategy == "fsdp":
        return jax.tree.map(
            lambda x: NamedSharding(mesh, fsdp_spec(x.shape, mesh.shape["data"])), state)
    return jax.tree.map(lambda _: replicated(mesh), state)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "dataset.batch_size") -> None:
    """Fails with the nearest valid sizes when `batch_size` does not divide over the data axis."""
    n = mesh.shape["data"]
    if batch_size % n:
        lower, upper = batch_size // n * n, (batch_size // n + 1) * n
        nearest = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(f"{what}={batch_size} does not divide over {n} devices on the data "
                         f"axis; use {nearest}")


def check_accumulation(batch_size: int, accumulate_steps: int, mesh: Mesh) -> None:
    """Fails with the numbers when `batch_size` does not split into `accumulate_steps`
    micro-batches that each divide over the data axis."""
    if accumulate_steps < 1:
        raise ValueError(f"optimizer.accumulate_steps={accumulate_steps} must be at least 1")
    n = mesh.shape["data"]
    unit = accumulate_steps * n
    if batch_size % unit:
        lower, upper = batch_size // unit * unit, (batch_size // unit + 1) * unit
        nearest = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(f"dataset.batch_size={batch_size} does not split into "
                         f"optimizer.accumulate_steps={accumulate_steps} micro-batches that "
                         f"divide over {n} devices (it must be a multiple of "
                         f"{accumulate_steps} x {n} = {unit}); use {nearest}")


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This process's numpy batch -> one global jax.Array per key, split over the data axis."""
    if jax.process_count() == 1:  # the local batch is the global one: the cheaper call
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def put_replicated(arrays: dict, sharding: NamedSharding) -> dict:
    """Numpy arrays every process holds whole -> global arrays with a copy on every device."""
    if jax.process_count() == 1:
        return jax.device_put(arrays, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}

