"""Meshes and shardings: where the state and each batch live.

The mesh is data in the config (`parallel.mesh`: axis=size pairs over the axes `data`, `fsdp`
and `tensor`, e.g. "data=2,fsdp=2,tensor=2"; -1 takes the devices left over; an axis not named
has size 1). The batch is split over `data` and `fsdp` together. The state is laid out by two
rules:

- `tensor`: the nets name each parameter's dimensions (`embed`, `mlp`, `heads`, `vocab`,
  `conv_out`, ...) through flax's sharding metadata (`nets.partitioning`), and a rules table
  (`RULES`, overridden by `parallel.rules`) maps those names onto mesh axes: by default the
  attention heads, the MLP's hidden units, the vocabulary and the convolutions' output
  channels are split over `tensor`, as Megatron-LM splits a Transformer.
- `fsdp`: each array of the state not yet split over `fsdp` is split along its largest
  remaining dimension that divides over it (`fsdp_spec`); arrays under 4,096 numbers stay
  whole. XLA gathers them for the forward pass and reduce-scatters the gradients.

The strategies users know are shorthands (`parallel.strategy`): `dp` lays the state out as the
mesh says (replicated on a mesh of `data` alone); `fsdp` reads the mesh's `data` axis as
`fsdp`; `pmap` maps the step over `data` (train/pmap.py), with the state replicated.
"""
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train.state import path_name

STRATEGIES = ("dp", "fsdp", "pmap")
AXES = ("data", "fsdp", "tensor")  # every mesh has the three, in this order
BATCH = ("data", "fsdp")           # the axes the batch is split over

# Which mesh axis each logical dimension name is split over ("" or absent: kept whole). The
# nets' names are listed here, so that a rule for a name no net uses is caught as a typo.
RULES = {"mlp": "tensor", "heads": "tensor", "vocab": "tensor", "conv_out": "tensor",
         "embed": "", "classes": "", "positions": "", "conv_in": "", "window": "",
         "features": "", "layers": ""}

# the dimensions through which a layer reads its input features: see `spec`
INPUTS = ("features", "conv_in")

# fsdp leaves arrays smaller than this replicated: splitting a bias saves nothing and costs a
# collective per step.
FSDP_MIN_SIZE = 2**12


def parse_mesh(spec: str, strategy: str = "dp") -> dict[str, int]:
    """"data=2,tensor=-1" -> {"data": 2, "fsdp": 1, "tensor": -1}, every axis present; under the
    `fsdp` strategy the `data` axis is read as `fsdp`."""
    try:
        pairs = [part.split("=") for part in spec.split(",")]
        names = [name.strip() for name, _ in pairs]
        sizes = [int(size) for _, size in pairs]
    except ValueError:
        raise ValueError(f"parallel.mesh={spec!r} is not 'axis=size,...' (e.g. 'data=-1' or "
                         f"'data=2,fsdp=2,tensor=2')") from None
    unknown = [n for n in names if n not in AXES]
    if unknown:
        raise ValueError(f"parallel.mesh={spec!r} names an unknown axis {unknown[0]!r}; the "
                         f"axes are {', '.join(AXES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"parallel.mesh={spec!r} names an axis twice")
    if sizes.count(-1) > 1 or any(s < -1 or s == 0 for s in sizes):
        raise ValueError(f"parallel.mesh={spec!r} needs positive sizes and at most one -1")
    mesh = {axis: 1 for axis in AXES} | dict(zip(names, sizes))
    if strategy == "fsdp":
        if set(names) & {"fsdp", "tensor"}:
            raise ValueError(f"parallel.strategy=fsdp reads the mesh's data axis as fsdp; with "
                             f"parallel.mesh={spec!r}, which names its axes, use "
                             f"parallel.strategy=dp")
        mesh["data"], mesh["fsdp"] = 1, mesh["data"]
    if strategy == "pmap" and (mesh["fsdp"] != 1 or mesh["tensor"] != 1):
        raise ValueError(f"parallel.strategy=pmap maps the step over the data axis alone; with "
                         f"parallel.mesh={spec!r} use parallel.strategy=dp")
    return mesh


def make_mesh(spec: str, devices=None, strategy: str = "dp") -> Mesh:
    """Builds the mesh "axis=size,..." (`parse_mesh`) over `devices` (default: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, strategy)
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if len(devices) % known:
            raise ValueError(f"parallel.mesh={spec!r} does not divide the {len(devices)} "
                             f"{devices[0].platform} devices found")
        sizes = {axis: len(devices) // known if s == -1 else s for axis, s in sizes.items()}
    count = math.prod(sizes.values())
    if count > len(devices):
        raise ValueError(f"parallel.mesh={spec!r} needs {count} devices but "
                         f"{len(devices)} {devices[0].platform} devices were found")
    processes = jax.process_count()
    if count < len(devices) and processes > 1:
        raise ValueError(f"parallel.mesh={spec!r} leaves devices out, which a run of "
                         f"{processes} processes cannot; use 'data=-1'")
    if (sizes["data"] * sizes["fsdp"]) % processes:
        raise ValueError(f"parallel.mesh={spec!r}: the data and fsdp axes ({sizes['data']} x "
                         f"{sizes['fsdp']}) must span the {processes} processes, each of which "
                         f"reads its own part of the batch; put more devices on them")
    devices = devices[:count]  # a smaller mesh uses the first devices
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), AXES)


def describe(mesh: Mesh) -> str:
    """'data=2,fsdp=2,tensor=2': the axes of more than one device ('data=1' for one device)."""
    named = [f"{axis}={size}" for axis, size in mesh.shape.items() if size > 1]
    return ",".join(named) or "data=1"


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_ways(mesh: Mesh) -> int:
    """How many parts the batch is split into: the devices of the data and fsdp axes."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over `data` and `fsdp`; the rest whole."""
    return NamedSharding(mesh, P(BATCH))


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown parallel.strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def parse_rules(text: str) -> dict[str, str]:
    """`RULES` with "name=axis,..." (`parallel.rules`; an empty axis keeps that name whole)."""
    rules = dict(RULES)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, equals, axis = (x.strip() for x in part.partition("="))
        if not equals or name not in RULES:
            raise ValueError(f"parallel.rules entry {part!r} is not NAME=AXIS with NAME one of "
                             f"{', '.join(RULES)}")
        if axis not in ("", *AXES[1:]):
            raise ValueError(f"parallel.rules entry {part!r} names no mesh axis a parameter is "
                             f"split over: fsdp or tensor, or nothing to keep it whole")
        rules[name] = axis
    return rules


def fsdp_spec(shape: tuple[int, ...], axis_size: int, taken=None, avoid=()) -> P:
    """Splits the largest dimension divisible by `axis_size` over `fsdp`, among those not
    `taken` (a spec's entries, None where free) nor in `avoid`; replicates small arrays."""
    taken = list(taken) if taken is not None else [None] * len(shape)
    if math.prod(shape) >= FSDP_MIN_SIZE and axis_size > 1:
        free = [d for d in range(len(shape))
                if taken[d] is None and d not in avoid and shape[d] % axis_size == 0]
        if free:
            taken[max(free, key=lambda d: shape[d])] = "fsdp"
    while taken and taken[-1] is None:  # P("fsdp"), not P("fsdp", None): the same, written once
        taken.pop()
    return P(*taken)


def spec(name: str, shape: tuple[int, ...], names, mesh: Mesh, rules: dict) -> P:
    """Where array `name` of `shape`, whose dimensions the net named `names` (or None), lives:
    the named dimensions split as `rules` say, then the fsdp rule on the rest."""
    axes = [None] * len(shape)
    for d, logical in enumerate(names or ()):
        axis = rules.get(logical, "") if logical else ""
        if not axis or mesh.shape[axis] == 1:
            continue
        if shape[d] % mesh.shape[axis]:
            raise ValueError(f"{name}: its dimension {d} ({logical}) of size {shape[d]} does not "
                             f"divide over the {mesh.shape[axis]} devices of the {axis} axis; "
                             f"use a size that does, or keep {logical} whole with "
                             f"--config.parallel.rules={logical}=")
        axes[d] = axis
    # An input dimension (`INPUTS`) may take an activation that the layer before split over
    # `tensor`; split over `fsdp` as well, XLA's partitioner computed the gradient of the
    # layers before it wrong (measured: an MLP of two layers on data=2,fsdp=2,tensor=2, the
    # first layer's gradient 4 % off). So with a tensor axis, fsdp leaves those dimensions.
    avoid = {d for d, logical in enumerate(names or ())
             if logical in INPUTS and mesh.shape["tensor"] > 1}
    # A stack of layers (`model.scan_layers`) is read one layer at a time: fsdp splits within
    # each layer, never across them.
    avoid |= {d for d, logical in enumerate(names or ()) if logical == "layers"}
    fsdp = 1 if "fsdp" in axes else mesh.shape["fsdp"]
    placed = fsdp_spec(shape, fsdp, axes, avoid)
    if fsdp == 1 or "fsdp" in placed or math.prod(shape) < FSDP_MIN_SIZE:
        return placed
    # no dimension left for fsdp: it splits the tensor-split one further, where that divides
    both = mesh.shape["tensor"] * fsdp
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if axes[d] == "tensor" and shape[d] % both == 0:
            axes[d] = ("tensor", "fsdp")
            break
    return fsdp_spec(shape, 1, axes)


def state_sharding(state, mesh: Mesh, strategy: str = "dp", rules: dict | None = None):
    """Where every leaf of the (checkpointed) state lives: `spec` of each array, with the names
    its variable carries (an optimizer's moments carry their parameter's)."""
    check_strategy(strategy)
    rules = RULES if rules is None else rules
    if strategy == "pmap":
        return jax.tree.map(lambda _: replicated(mesh), state)

    def place(path, leaf):
        # a value without a shape (optax's placeholder for a frozen array's state) is whole
        if isinstance(leaf, nnx.Variable):
            shape = getattr(leaf.get_value(), "shape", ())
            names = leaf.get_metadata().get("out_sharding") if shape else None
            return leaf.replace(NamedSharding(mesh, spec(path_name(path), shape, names, mesh,
                                                         rules)))
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, spec(path_name(path), shape, None, mesh, rules))

    return jax.tree_util.tree_map_with_path(
        place, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "dataset.batch_size") -> None:
    """Fails with the nearest valid sizes when `batch_size` does not divide over the data axis."""
    n = batch_ways(mesh)
    if batch_size % n:
        lower, upper = batch_size // n * n, (batch_size // n + 1) * n
        nearest = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(f"{what}={batch_size} does not divide over {n} devices on the data"
                         f"{' and fsdp axes' if mesh.shape['fsdp'] > 1 else ' axis'}; use "
                         f"{nearest}")


def check_accumulation(batch_size: int, accumulate_steps: int, mesh: Mesh) -> None:
    """Fails with the numbers when `batch_size` does not split into `accumulate_steps`
    micro-batches that each divide over the data axis."""
    if accumulate_steps < 1:
        raise ValueError(f"optimizer.accumulate_steps={accumulate_steps} must be at least 1")
    n = batch_ways(mesh)
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

