"""Meshes and shardings: where the state and each batch live.

The mesh is data in the config (`parallel.mesh = "data=-1"`: axis=size pairs, -1 takes the
devices left over). Data parallelism shards the batch axis over `data` and replicates the state.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STRATEGIES = ("dp",)


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
    if "data" not in names:
        raise ValueError(f"parallel.mesh={spec!r} has no 'data' axis; e.g. 'data=-1'")
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
    devices = devices[:math.prod(sizes)]  # a smaller mesh uses the first devices
    return Mesh(np.asarray(devices).reshape(sizes), names)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over `data`; the rest whole."""
    return NamedSharding(mesh, P("data"))


def state_sharding(state, mesh: Mesh, strategy: str = "dp"):
    """A sharding for every leaf of `state` under `strategy`."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown parallel.strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return jax.tree.map(lambda _: replicated(mesh), state)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "dataset.batch_size") -> None:
    """Fails with the nearest valid sizes when `batch_size` does not divide over the data axis."""
    n = mesh.shape["data"]
    if batch_size % n:
        lower, upper = batch_size // n * n, (batch_size // n + 1) * n
        nearest = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(f"{what}={batch_size} does not divide over {n} devices on the data "
                         f"axis; use {nearest}")


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This process's numpy batch -> one global jax.Array per key, split over the data axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
