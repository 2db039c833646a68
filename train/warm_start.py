"""Warm start (`init_from`): a fresh run's weights from another run's checkpoint.

Every parameter array and batch-norm statistic whose name and shape match one in the
checkpoint is loaded, and so is a stack of layers saved one by one or the reverse (a run with
`model.scan_layers` from one without: `blocks/up/kernel` of 12 x 768 x 3072 from
`blocks/0/up/kernel` ... `blocks/11/up/kernel`, or layer 3 from index 3 of the stack); the
others keep their fresh initialisation, and the run says which (a new head for another number
of classes, say). The optimizer state, the step and the random
key start fresh: a warm start is a new run, not a resume. The checkpoint is only read: its
work directory is held with a shared lock, and its files are checked against their checksums
before any array is used.
"""
import logging
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import checkpoint, storage, workdir_lock
from train.state import TrainState, named

log = logging.getLogger(__name__)

LOADED = ("params", "model_state")  # the parts of a state a warm start takes


class Layer(NamedTuple):
    """Layer `index` of a stack of `length` layers saved as one array named `stack`."""
    stack: str
    index: int
    length: int


class Source(NamedTuple):
    """Which checkpoint a warm start reads, and what of it fits this run's state."""
    workdir: str
    step: int
    loaded: tuple[str, ...]  # names of the arrays taken from it ('params/head/kernel')
    fresh: tuple[str, ...]   # one line per array that starts fresh, saying why
    # arrays made from another layout of the same layers: name -> the checkpoint's names
    # they are stacked from, or the `Layer` of a checkpoint's stack they are
    restacked: dict = {}


def parse(init_from: str) -> tuple[str, str]:
    """'WORKDIR[:STEP]' -> (WORKDIR, STEP), STEP 'best' (the default), 'latest' or a number.
    A folder whose own name ends in ':best' or ':7' is read as that folder."""
    found = re.fullmatch(r"(.+):(best|latest|[0-9]+)", init_from)
    if found and not storage.is_folder(init_from):
        return found.group(1), found.group(2)
    return init_from, "best"


def plan(init_from: str, like: TrainState, model: str) -> Source:
    """What a warm start from `init_from` loads into a state shaped as `like`, of net `model`,
    read from the checkpoint's metadata once its files have passed their checksums. Raises
    ValueError when `init_from` names no checkpoint, a damaged one, one of another net, or one
    none of whose parameters fits."""
    workdir, which = parse(init_from)
    if storage.is_url(workdir):
        workdir = storage.check_url(workdir, what="init_from")
    if not checkpoint.has_checkpoints(workdir):
        raise ValueError(f"init_from={init_from!r}: {workdir} holds no checkpoint; name the "
                         f"work directory of a run that saved one (descent train, descent "
                         f"import), optionally with :best, :latest or :STEP")
    with workdir_lock.hold(workdir, exclusive=False):
        manager = checkpoint.open_manager(workdir, read_only=True)
        step = checkpoint.resolve_step(manager, which)
        try:  # before any of its metadata is read: a damaged file must not crash the reading
            checkpoint.verify_checksums(manager, step)
        except checkpoint.DamagedCheckpoint as e:
            raise ValueError(f"init_from: the checkpoint at step {step} in {workdir} is damaged "
                             f"({e}); name another step") from None
        theirs = checkpoint.saved_config(manager, step).get("model", {}).get("name")
        saved = {name: tuple(leaf.shape)
                 for name, leaf in named(manager.item_metadata(step)["state"]).items()}
    if theirs != model:  # arrays of another net that happen to share a name and a shape
        raise ValueError(f"init_from={init_from!r} is a run of model {theirs!r}, and this run "
                         f"trains {model!r}; warm-start from a run of the same net")
    wanted = {name: tuple(leaf.shape) for name, leaf in _parts(like).items()}
    restacked = {name: how for name, shape in wanted.items() if saved.get(name) != shape
                 and (how := _other_layout(name, shape, saved)) is not None}
    loaded = tuple(name for name, shape in wanted.items()
                   if saved.get(name) == shape or name in restacked)
    fresh = tuple(f"{name} (not in the checkpoint)" if name not in saved else
                  f"{name} ({_shape(saved[name])} in the checkpoint, {_shape(shape)} here)"
                  for name, shape in wanted.items() if name not in loaded)
    if not any(name.startswith("params/") for name in loaded):
        raise ValueError(f"init_from={init_from!r}: no parameter of the checkpoint at step "
                         f"{step} in {workdir} fits this model (e.g. {fresh[0]}); warm-start "
                         f"from a run of the same net")
    return Source(storage.absolute(workdir), step, loaded, fresh, restacked)


def _other_layout(name: str, shape: tuple, saved: dict):
    """How array `name` of `shape` is made from `saved` (names to shapes) laid out the other
    way: the names of layers 0, 1, ... saved one by one (`name` is their stack), or the `Layer`
    of a saved stack it is; None where neither is there."""
    parts = name.split("/")
    for cut in range(1, len(parts)):
        head, tail = "/".join(parts[:cut]), "/".join(parts[cut:])
        if shape and f"{head}/0/{tail}" in saved:  # a stack wanted, layers saved
            layers = [f"{head}/{i}/{tail}" for i in range(shape[0])]
            if all(saved.get(layer) == shape[1:] for layer in layers) \
                    and f"{head}/{shape[0]}/{tail}" not in saved:
                return tuple(layers)
        if parts[cut].isdigit() and cut + 1 < len(parts):  # a layer wanted, a stack saved
            stack = f"{head}/{'/'.join(parts[cut + 1:])}"
            stacked = saved.get(stack)
            if stacked and stacked[1:] == shape and int(parts[cut]) < stacked[0]:
                return Layer(stack, int(parts[cut]), stacked[0])
    return None


def load(source: Source, like: TrainState, level: int = logging.INFO) -> TrainState:
    """`like` (a fresh state) with the arrays `source` lists read from its checkpoint (checked
    by `plan`), each laid out as `like`'s own; a moving average of the weights starts at the
    loaded ones."""
    with workdir_lock.hold(source.workdir, exclusive=False):
        manager = checkpoint.open_manager(source.workdir, read_only=True)
        ours = _parts(like)
        wanted = {name: ours[name] for name in source.loaded if name not in source.restacked}
        for name, how in source.restacked.items():
            wanted.update(_pieces(ours[name], how))
        target = _target(_saved_parts(manager, source.step), "", wanted)
        restored = manager.restore(source.step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))).state
    read = named(restored)
    for name, how in source.restacked.items():
        made = (read[how.stack][how.index] if isinstance(how, Layer)
                else jnp.stack([read[layer] for layer in how]))
        read[name] = jax.device_put(made, ours[name].sharding)
    parts = {}
    for part in LOADED:
        tree = getattr(like, part)
        leaves = [read.get(name, leaf) for name, leaf in named({part: tree}).items()]
        parts[part] = jax.tree.unflatten(jax.tree.structure(tree), leaves)
    state = like.replace(**parts)
    if like.ema_params is not None:
        state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
    log.log(level, "init_from: %d of %d arrays loaded from the checkpoint at step %d in %s",
            len(source.loaded), len(source.loaded) + len(source.fresh), source.step,
            source.workdir)
    if source.restacked:
        log.log(level, "init_from: %d of them stacked from layers saved one by one, or taken "
                "from a saved stack of layers (model.scan_layers)", len(source.restacked))
    for line in source.fresh:
        log.log(level, "init_from: initialised here: %s", line)
    return state


def _pieces(ours, how) -> dict:
    """What to read from the checkpoint for `ours` made as `how` says (`_other_layout`), each
    laid out as `ours` is, without or with the stack's dimension."""
    spec = (*ours.sharding.spec, *[None] * (ours.ndim - len(ours.sharding.spec)))
    if isinstance(how, Layer):  # the whole stack is read, laid out as ours along the rest
        where = NamedSharding(ours.sharding.mesh, P(None, *spec))
        return {how.stack: jax.ShapeDtypeStruct((how.length, *ours.shape), ours.dtype,
                                                sharding=where)}
    where = NamedSharding(ours.sharding.mesh, P(*spec[1:]))  # each layer as a layer of ours
    return {layer: jax.ShapeDtypeStruct(ours.shape[1:], ours.dtype, sharding=where)
            for layer in how}


def _parts(state: TrainState) -> dict:
    return named({part: getattr(state, part) for part in LOADED})


def _saved_parts(manager, step: int) -> dict:
    saved = manager.item_metadata(step)["state"]
    return {part: saved[part] for part in LOADED if part in saved}


def _target(node, name: str, wanted: dict):
    """The restore target: `node` (the checkpoint's metadata tree) cut to the arrays named in
    `wanted`, each an abstract array shaped and placed as `wanted`'s; None where none is."""
    if isinstance(node, Mapping):
        kept = {}
        for key, child in node.items():
            below = name if key == "value" else f"{name}/{key}" if name else str(key)
            cut = _target(child, below, wanted)
            if cut is not None:
                kept[key] = cut
        return kept or None
    ours = wanted.get(name)
    if ours is None:
        return None
    return jax.ShapeDtypeStruct(ours.shape, ours.dtype, sharding=ours.sharding)


def _shape(shape: tuple) -> str:
    return "x".join(map(str, shape)) or "scalar"
