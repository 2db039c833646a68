"""Many small runs of one model as one compiled program: `jax.vmap` over the runs' states.

Studies and sweeps train the same small net again and again (seeds, learning rates). Each run
alone leaves the devices idle between its small steps; stacked on a leading run axis, one step
trains every run at once. The runs may differ only in `seed` (initial weights, dropout and the
data order: each run reads its own batches) and in `optimizer.learning_rate` (traced into the
optimizer, so every run keeps the optimizer state of an ordinary run). Every run writes its own
work directory exactly as `train.loop.fit` does: the same records at the same steps, the same
checkpoints (restored by `descent eval` like any other), curves and TensorBoard files.

How equal to the runs alone: a batched matmul sums in another order than a single one, so each
step agrees to rounding (6e-8 in the parameters after the 78 steps of digits_mlp.py:tiny,
tests/test_many.py). Rounding does not stay there: Adam turns rounding-level gradients of units
that barely learn into full steps, and over the 1,560 steps of digits_mlp.py the parameters
drift apart (max 0.15, median 6e-4 for seed 0 here) while the results agree (test accuracy
0.9778 both, loss 0.1709 against 0.1707): another sample of the same run, not the same bits.

The runs train on one device (the mesh of each run's Trainer is `data=1`): runs this small
gain nothing from splitting a batch, and many of them fill the device instead. They train in
`train.loop`'s one loop, as a `Group`: the loop asks it for the step, each run's metrics and
state, and each run's evaluation, and does the rest as it does for a run alone.
"""
import copy
import os
import resource
import threading
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import storage
from train.dataset import Dataset, InMemory
from train.loop import train_runs
from train.optimizers import make_optimizer
from train.resume import flat
from train.state import TrainState, num_params
from train.step import make_eval_step, make_train_step, summarize_eval
from train.trainer import Trainer, total_steps

# What may differ between the runs of one program: the seed, and scalars of the optimizer that
# enter its arithmetic only (never its structure).
VARIED = ("seed", "optimizer.learning_rate")

# What a run of a group costs beside its states: its Trainer, checkpoint manager and threads.
# Measured from 1 to 40 runs of digits_mlp.py:tiny: 5.3 MB of resident memory and 2.5 threads
# a run (orbax's manager and descent's checksum thread); rounded up.
RUN_OVERHEAD_BYTES, RUN_THREADS = 6 * 2**20, 3
# Copies of a run's state (parameters, optimizer state, moving average) the group holds at
# once: the stacked state, the step's next one, the slice a save takes and orbax's host copy.
STATE_COPIES = 4


def check_group(configs: Sequence) -> list[str]:
    """Refuses configs that cannot train as one program (they differ in more than `VARIED`,
    or in nothing at all); returns the keys that do differ."""
    if not configs:
        raise ValueError("train_many needs at least one config")
    flats = [flat(c.to_dict()) for c in configs]
    keys = sorted(set().union(*flats))
    differ = [k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats[1:])]
    others = [k for k in differ if k not in VARIED and k not in ("parallel.strategy",
                                                                   "parallel.mesh")]
    if others:
        raise ValueError(f"runs trained as one program may differ only in "
                         f"{' and '.join(VARIED)}; these differ too: {', '.join(others)}. "
                         f"Train them as separate groups")
    seen = {}
    for i, f in enumerate(flats):
        same = tuple(f.get(k) for k in VARIED)
        if same in seen:
            raise ValueError(f"runs {seen[same]} and {i} are the same run (seed {same[0]}, "
                             f"learning rate {same[1]}); give each run its own seed or "
                             f"learning rate")
        seen[same] = i
    check_fits(len(configs))
    return differ


def check_fits(count: int, state: TrainState | None = None) -> None:
    """Refuses a group of `count` runs the machine cannot hold, before anything is made: the
    memory of each run's `STATE_COPIES` states (`state`: a run's initial one, when known) and
    of its manager and threads against the memory available, and its threads against the
    process's limit."""
    state_bytes = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) if state else 0
    need = count * (STATE_COPIES * state_bytes + RUN_OVERHEAD_BYTES)
    available = available_memory()
    runs = (f"a group of {count:,} runs needs about {need / 2**30:,.1f} GiB of memory "
            f"({STATE_COPIES} copies of each run's {state_bytes / 2**20:,.1f} MiB of parameters "
            f"and optimizer state, and {RUN_OVERHEAD_BYTES / 2**20:.0f} MiB for its checkpoints"
            f" and threads)")
    if available is not None and need > available:
        raise ValueError(f"{runs}, and {available / 2**30:,.1f} GiB is available; train fewer "
                         f"runs at once (fewer --seeds or --sweep values): "
                         f"{available // (need // count):,} fit")
    threads, limit = count * RUN_THREADS + threading.active_count(), thread_limit()
    if limit is not None and threads > limit:
        raise ValueError(f"a group of {count:,} runs needs about {threads:,} threads "
                         f"({RUN_THREADS} a run), and this user may run {limit:,}; train "
                         f"fewer runs at once (fewer --seeds or --sweep values)")


def available_memory() -> int | None:
    """The memory available to new work in bytes (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def thread_limit() -> int | None:
    """How many threads this user may run (RLIMIT_NPROC, which counts threads), or None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    return None if soft == resource.RLIM_INFINITY else soft


def scaled(tx: optax.GradientTransformation, factor) -> optax.GradientTransformation:
    """`tx` with its updates multiplied by `factor` (traced: one value per run under vmap),
    keeping `tx`'s own state, so a checkpoint holds what an ordinary run's does."""
    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        return jax.tree.map(lambda u: factor.astype(u.dtype) * u, updates), state

    return optax.GradientTransformation(tx.init, update)


def make_many_step(trainer: Trainer, config, num_steps: int, steps_per_epoch: int,
                   same_learning_rate: bool = False, on_device=None):
    """`step(states_R, batches_R, learning_rates_R) -> (states_R, metrics_R)`: the train step
    `Trainer` builds, vmapped over runs. With `on_device` (a dataset held in memory), the step
    is `step(states_R, arrays, plans_R, learning_rates_R)` instead: each run reads its batch
    from the training split's `arrays` on the device by its own plan (`train_plans`), as
    `Trainer.device_feed` does for a run alone. Every optimizer here applies its learning rate
    last (optax's `scale_by_learning_rate`), so each run's optimizer is the config's made with
    learning rate 1 (schedule, clipping and weight decay included), its updates then scaled by
    the run's learning rate: the same arithmetic as the run alone, up to the rounding of
    lr * (s * u) against (lr * s) * u, and the same optimizer state. With
    `same_learning_rate` (runs that differ in their seed only), the config's optimizer is used
    as it is, without that rounding."""
    opt = config.optimizer
    unit = copy.deepcopy(opt)
    unit.learning_rate = 1.0
    unit_tx = make_optimizer(unit, num_steps, steps_per_epoch, config.dataset.batch_size)
    if same_learning_rate:
        own_tx = make_optimizer(opt, num_steps, steps_per_epoch, config.dataset.batch_size)
    l2 = opt.weight_decay if opt.name != "adamw" else 0.0  # as Trainer: adamw's is decoupled

    def one_run(state, batch, learning_rate):
        step = make_train_step(
            trainer.graphdef, trainer.task,
            own_tx if same_learning_rate else scaled(unit_tx, learning_rate), None,
            config.log.layer_grad_norms,
            accumulate_steps=trainer.accumulate_steps, ema_decay=trainer.ema_decay, l2=l2,
            report_objective=bool(config.loss.label_smoothing or l2))
        return step(state, batch)

    many = jax.vmap(one_run)
    if on_device is None:
        return jax.jit(many, donate_argnums=0)

    def from_plans(states, arrays, plans, learning_rates):
        batches = jax.vmap(on_device.device_batch, in_axes=(None, 0))(arrays, plans)
        return many(states, batches, learning_rates)

    return jax.jit(from_plans, donate_argnums=0)


def fit_many(configs: Sequence, workdirs: Sequence[str], models: Sequence, dataset: Dataset,
             *, console: bool = True, allow_config_change: bool = False,
             writers: Sequence = (), test_split: str | None = None) -> list[dict]:
    """Trains one run per (config, workdir, model) as one vmapped program on one device.

    Each summary is what `train.loop.fit` returns for that run (`state`, `trainer`,
    `best_step`, `latest_step`, `stop_reason`, `history`, `curves`, `checkpoints`, and with
    `test_split` `test` and `tests`), plus `diverged` (the message, or None) and
    `diverged_at` (its step): a run whose loss became NaN or infinite stops there, keeping its
    last good checkpoint, while the others go on. Resumes when every work directory holds a
    checkpoint at the same step (other mixtures are refused with the steps), with the checks
    and the `allow_config_change` of a run alone. `writers` receive every record with `run`
    (its index) added.
    """
    if not (len(configs) == len(workdirs) == len(models)):
        raise ValueError(f"{len(configs)} configs, {len(workdirs)} workdirs and {len(models)} "
                         f"models: give one of each per run")
    if len(set(map(os.path.abspath, workdirs))) < len(workdirs):
        raise ValueError("two runs share a workdir; give each run its own")
    for workdir in workdirs:  # planted there, it would take a run's files elsewhere
        if storage.is_url(workdir):  # a group removes checkpoints it resumes past, by rename
            raise ValueError(f"the run directory {workdir} is in a bucket; a group of runs "
                             f"trains in a folder on this machine: pass a local --workdir")
        if os.path.islink(workdir):
            raise ValueError(f"the run directory {workdir} is a symbolic link; a group writes "
                             f"each run into a directory of its own: remove the link, or use "
                             f"another --workdir")
    check_group(configs)
    if jax.process_count() > 1:
        raise ValueError("train_many runs in one process; run it without --coordinator")
    configs = [copy.deepcopy(c) for c in configs]
    for c in configs:  # one device: nothing to split
        c.parallel.strategy, c.parallel.mesh = "dp", "data=1"
    if configs[0].profile.start_step:
        raise ValueError("profile.start_step applies to single runs; profile one run with "
                         "descent train --config ... (without --seeds)")
    trainers = [Trainer(configs[0], models[0], dataset)]
    check_fits(len(configs), trainers[0].initial_state)  # now that a run's state is known
    trainers += [Trainer(c, m, dataset) for c, m in zip(configs[1:], models[1:])]
    return train_runs(Group(trainers, configs, dataset), configs, list(workdirs), dataset,
                      console=console, allow_config_change=allow_config_change,
                      writers=writers, test_split=test_split)


class Group:
    """Runs trained as one program (`train.runs.Runs`): their states stacked on a leading run
    axis, each step `make_many_step`, each evaluation every run's at once."""

    def __init__(self, trainers: list[Trainer], configs: list, dataset: Dataset):
        self.trainers, self.configs, self.dataset = trainers, configs, dataset
        self.count = len(trainers)
        self.devices = [jax.devices()[0]]
        self._learning_rates = jnp.asarray([c.optimizer.learning_rate for c in configs],
                                           jnp.float32)
        # every run's learning rate at a step, as each run's trainer has it: one program
        self._rates_at = jax.jit(lambda step: jnp.stack([t.learning_rate(step)
                                                         for t in trainers]))
        self._unstack = jax.jit(lambda s: [jax.tree.map(lambda x, i=i: x[i], s)
                                           for i in range(self.count)])
        self._evaluate = make_evaluate_many(trainers[0])
        self._step, self._arrays, self._compiled = None, (), None

    def join(self, states: list[TrainState]):
        return stack(states)

    def states(self, stacked) -> list[TrainState]:
        return self._unstack(stacked)

    def batches(self, step: int, num_steps: int) -> Iterator[tuple[int, dict]]:
        """(step number, {"inputs": (R, B, ...), "targets": (R, B, ...)}) for every step after
        `step`: run r's batch is the one its own seed's run would read. In-memory data is kept
        on the device, and each step is sent its runs' plans instead (`train_plans`: row
        numbers and augmentation draws), stacked the same way."""
        config = self.configs[0]
        on_device = (self.dataset if step < num_steps and config.dataset.on_device
                     and isinstance(self.dataset, InMemory) else None)
        if on_device is not None:  # the step's second argument
            self._arrays = (jax.device_put(on_device.device_arrays("train"), self.devices[0]),)
        steps_per_epoch = self.dataset.steps_per_epoch(config.dataset.batch_size)
        self._step = make_many_step(self.trainers[0], config,
                                    total_steps(config, steps_per_epoch), steps_per_epoch,
                                    len({c.optimizer.learning_rate for c in self.configs}) == 1,
                                    on_device)
        read = self.dataset.train_plans if on_device is not None else self.dataset.train_batches
        return _stacked_batches(read, self.configs, step, num_steps, steps_per_epoch)

    def compile(self, stacked, batch) -> tuple[float, float | None]:
        start = time.perf_counter()
        self._compiled = self._step.lower(stacked, *self._arrays, batch,
                                          self._learning_rates).compile()
        seconds = time.perf_counter() - start
        try:
            return seconds, float(self._compiled.cost_analysis()["flops"]) / self.count
        except Exception:  # noqa: BLE001 - a backend without cost analysis
            return seconds, None

    def step(self, stacked, batch):
        return self._compiled(stacked, *self._arrays, batch, self._learning_rates)

    def fetch(self, metrics: dict) -> list[dict]:
        host = jax.device_get(metrics)
        return [{k: float(v[i]) for k, v in host.items()} for i in range(self.count)]

    def learning_rates(self, step: int) -> list[float]:
        return [float(r) for r in np.asarray(self._rates_at(step))]

    def evaluate(self, stacked, split: str, weights: str) -> list[dict]:
        return self._evaluate(stacked, self.dataset.eval_batches(
            split, self.configs[0].dataset.eval_batch_size), weights)

    def starting_line(self, step: int, num_steps: int) -> str:
        if step >= num_steps:
            return (f"these runs are finished: their checkpoints at step {step} are the last "
                    f"of their {num_steps} steps. To train them further, raise --config.epochs "
                    f"(or --config.steps)")
        config = self.configs[0]
        return (f"training {self.count} runs of "
                f"{num_params(self.trainers[0].initial_state):,} parameters as one program for "
                f"{num_steps} steps ({self.dataset.steps_per_epoch(config.dataset.batch_size)} "
                f"per epoch, batch {config.dataset.batch_size}) on 1 "
                f"{self.devices[0].platform} device")


def _stacked_batches(read, configs, step: int, num_steps: int, steps_per_epoch: int):
    batch_size = configs[0].dataset.batch_size
    while step < num_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        end = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)
        streams = [read(batch_size, seed=c.seed, epoch=epoch, start=offset) for c in configs]
        for _ in range(end - offset):
            per_run = [next(s) for s in streams]
            step += 1
            yield step, {k: np.stack([b[k] for b in per_run]) for k in per_run[0]}


def make_evaluate_many(trainer: Trainer):
    """`evaluate(stacked_states, batches, weights) -> [metrics of run 0, ...]`: what
    `trainer.evaluate` returns for each run, every batch scored by every run in one call."""
    eval_many = jax.jit(jax.vmap(make_eval_step(trainer.graphdef, trainer.task),
                                 in_axes=(0, None)))

    def evaluate(stacked, batches, weights: str = "raw") -> list[dict]:
        states = stacked if weights == "raw" else stacked.replace(params=stacked.ema_params)
        sums = None
        for batch in batches:
            got = eval_many(states, batch)
            sums = got if sums is None else jax.tree.map(jnp.add, sums, got)
        sums = jax.device_get(sums)
        runs = len(next(iter(sums.values())))
        return [summarize_eval({k: v[i] for k, v in sums.items()}) for i in range(runs)]

    return evaluate


def stack(states: Sequence) -> object:
    """Runs' states -> one state whose arrays have a leading run axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)
