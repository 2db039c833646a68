"""`descent plan`: what a run needs on each device, found before it trains.

The state's bytes come from the shardings the run gives it (each device holds its shard of
every array), the temporaries (activations kept for the backward pass, and the step's other
scratch space) from XLA's memory analysis of the compiled training step, and the FLOPs from
XLA's count of the same program. Nothing is allocated: the state is traced for its shapes and
the step compiled for them, so a model far larger than this machine plans as well as a small
one.
"""
import math
import re
from typing import NamedTuple

import jax
import numpy as np

from train import sharding
from train.dataset import Dataset, InMemory
from train.state import num_params
from train.trainer import Trainer

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class Plan(NamedTuple):
    """Bytes per device (the largest share where devices differ) of a run's training step."""
    model: str
    parameters: int            # how many numbers the model trains
    devices: int
    platform: str
    mesh: str                  # as resolved: 'data=8', 'fsdp=4,tensor=2'
    strategy: str
    batch_size: int
    remat: str | None          # model.remat where the net takes it
    chunk: int | None          # loss.chunk where the net is a language model
    scan_layers: bool | None   # model.scan_layers where the net takes it
    loops: bool                # the step loops over matrix products (its FLOPs go uncounted)
    params: int                # the parameters' bytes
    optimizer: int             # the optimizer state's (Adam's two moments, momentum, ...)
    other: int                 # batch-norm statistics, a moving average of the weights, step, key
    batch: int                 # one step's batch
    on_device_data: int        # a training split kept on every device (dataset.on_device)
    temporaries: int | None    # XLA's temp buffers of the compiled step
    flops: float | None        # per device and step

    @property
    def total(self) -> int:
        return (self.params + self.optimizer + self.other + self.batch + self.on_device_data
                + (self.temporaries or 0))


def parse_bytes(text: str) -> int:
    """'80GB', '16 GiB', '512MB', '1e9' -> bytes; a size that is not positive is refused."""
    found = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not found or found.group(2) not in UNITS:
        raise ValueError(f"--device-memory {text!r} is not a size such as 80GB, 16GiB or 512MB")
    size = float(found.group(1)) * UNITS[found.group(2)]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"--device-memory {text!r} must be a positive size such as 80GB")
    return int(size)


def make_plan(config, model, dataset: Dataset, compile: bool = True) -> Plan:
    """The plan of training `model` (a function that builds it) on `dataset` as `config` says,
    on this process's devices; without `compile`, the state's and batch's bytes alone (no
    temporaries, no FLOPs)."""
    trainer = Trainer(config, model, dataset, materialize=False)
    state = trainer.initial_state
    batch = next(iter(dataset.train_batches(config.dataset.batch_size, seed=config.seed,
                                            epoch=0)))
    batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype,
                                     sharding=trainer.batch_sharding) for k, v in batch.items()}
    compiled = trainer.compile(state, batch) if compile else None
    kept = 0
    if config.dataset.on_device and isinstance(dataset, InMemory):
        kept = sum(np.asarray(v).nbytes for v in dataset.device_arrays("train").values())
    first = next(iter(trainer.mesh.devices.flat))
    return Plan(
        model=config.model.name, parameters=num_params(state),
        devices=trainer.mesh.devices.size, platform=first.platform,
        mesh=sharding.describe(trainer.mesh),
        strategy=trainer.strategy, batch_size=config.dataset.batch_size,
        remat=config.model.get("remat"), chunk=trainer.task.chunk if trainer.chunkable else None,
        scan_layers=config.model.get("scan_layers"),
        params=per_device(state.params),
        optimizer=per_device(state.opt_state),
        other=per_device((state.step, state.model_state, state.rng, state.ema_params)),
        batch=per_device(batch), on_device_data=kept,
        temporaries=(compiled.memory.temp_size_in_bytes
                     if compiled and compiled.memory else None),
        flops=compiled.flops if compiled else None, loops=bool(compiled and compiled.loops))


def per_device(tree) -> int:
    """The bytes of `tree`'s arrays on one device: each array's shard under its sharding."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def report(plan: Plan, memory: int | None = None) -> list[str]:
    """The plan as the lines `descent plan` prints; with `memory` (bytes per device), whether
    it fits and, if not, what would make it."""
    state = plan.params + plan.optimizer + plan.other
    lines = [f"plan: {plan.model}, {plan.parameters:,} parameters, batch {plan.batch_size}, on "
             f"{plan.devices} {plan.platform} device(s), mesh {plan.mesh}, strategy "
             f"{plan.strategy}",
             "per device:",
             f"  parameters        {_size(plan.params):>10}",
             f"  optimizer state   {_size(plan.optimizer):>10}",
             f"  other state       {_size(plan.other):>10}   (batch-norm statistics, moving "
             f"average, step, key)",
             f"  batch             {_size(plan.batch):>10}"]
    if plan.on_device_data:
        lines.append(f"  data on device    {_size(plan.on_device_data):>10}   (the training "
                     f"split, dataset.on_device)")
    if plan.temporaries is None:
        lines.append("  temporaries       not measured (this backend has no memory analysis)")
    else:
        lines.append(f"  temporaries       {_size(plan.temporaries):>10}   (XLA's memory "
                     f"analysis of the compiled step)")
    lines.append(f"  total             {_size(plan.total):>10}")
    if plan.flops:
        lines.append(f"FLOPs per step and device: {plan.flops:.3g}")
    elif plan.loops:
        lines.append("FLOPs per step: not counted (the step runs a loop, whose body XLA counts "
                     "once)")
    if memory is None:
        return lines
    if plan.total <= memory:
        lines.append(f"fits in {_size(memory)} per device ({plan.total / memory:.0%} of it)")
        return lines
    levers = []
    if plan.strategy != "fsdp" and plan.devices > 1:
        levers.append(f"--config.parallel.strategy=fsdp (the state split over the "
                      f"{plan.devices} devices: about {_size(state / plan.devices)} of its "
                      f"{_size(state)})")
    if plan.remat == "none":
        scan = " --config.model.scan_layers=true" if plan.scan_layers is False else ""
        levers.append(f"--config.model.remat=block{scan} (each block's activations recomputed "
                      f"in the backward pass)")
    if plan.chunk == 0:
        levers.append("--config.loss.chunk=128 (the float32 logits made 128 positions at a "
                      "time, never over the whole sequence)")
    if plan.temporaries:
        levers.append("a smaller --config.dataset.batch_size with "
                      "--config.optimizer.accumulate_steps (temporaries grow with the batch)")
    if plan.devices == 1 or plan.strategy == "fsdp":
        levers.append("more devices, with --config.parallel.strategy=fsdp")
    lines.append(f"does not fit in {_size(memory)} per device: it needs {_size(plan.total)}; "
                 f"try " + "; or ".join(levers))
    return lines


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
