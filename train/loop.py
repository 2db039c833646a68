"""The training loop: one function that reads top to bottom, its helpers beside it.

It receives a model and a dataset and knows neither's kind: the dataset needs
`steps_per_epoch(batch_size)`, `train_batches(batch_size, seed=, epoch=, start=,
process_index=, process_count=)` (the epoch's batches from number `start` on),
`eval_batches(split, batch_size, process_index=, process_count=)` and `task`
("classification" or "regression").
"""
import contextlib
import itertools
import json
import math
import operator
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from flax import nnx

from train import checkpoint, report, workdir_lock
from train.state import num_params
from train.throughput import Profile, speed
from train.trainer import Trainer, total_steps
from train.writers import Console, JsonLines, TensorBoard, Writers


# Steps dispatched ahead of the one the host last waited for. Enough to keep a device busy
# while the host prepares the next batch; bounded, because each queued step holds its batch in
# device memory, and because XLA's CPU collectives over simulated devices abort ("only 7 of 8
# threads arrived") when hundreds of steps are queued.
MAX_STEPS_IN_FLIGHT = 2


class Diverged(RuntimeError):
    """The loss became NaN or infinite at `step`; the last good checkpoint is kept."""

    def __init__(self, message: str, step: int):
        self.step = step
        super().__init__(message)


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; the step in flight finished and was saved."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; its "
                         f"checkpoint is saved in {directory}. Run the same command to resume")


def prepare_workdir(workdir: str) -> str:
    """Creates `workdir` and proves it writable, before any work is done."""
    try:
        os.makedirs(workdir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write-test-")  # never a link
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} cannot be written ({e.strerror}); "
                         f"pass a --workdir you can write to") from None
    for name in ("checkpoints", checkpoint.DAMAGED_DIR):  # descent writes inside it, only
        if os.path.islink(os.path.join(workdir, name)):
            raise ValueError(f"{os.path.join(workdir, name)} is a symbolic link; descent writes "
                             f"only inside the work directory: make it a real directory")
    return workdir


def monitored(task: str, ema: bool = False) -> tuple[str, ...]:
    """The metrics early stopping can watch (and best checkpoints be ranked by) for `task`; with
    `ema`, those of the weights' moving average too."""
    names = ("accuracy", "loss") if task == "classification" else ("loss", "mae")
    return tuple(f"eval_{prefix}{n}" for prefix in ("", "ema_")[:1 + ema] for n in names)


# Config keys a resumed run may change freely: how long it runs, and where (devices, data path).
RESUMABLE_CHANGES = ("epochs", "steps", "parallel.strategy", "parallel.mesh", "dataset.data_dir",
                     "dataset.on_device")
HISTORY_FILE = "history.jsonl"


def fit(config, workdir: str, model: nnx.Module | Callable[[], nnx.Module], dataset, *,
        console: bool = True,
        allow_config_change: bool = False, writers: Sequence = ()) -> dict:
    """Trains `model` on `dataset` as `config` says; checkpoints, metrics and plot go to `workdir`.
    `model` may be a function that builds it: its state is then made in place (`Trainer`).

    The work directory is locked while it trains (`train.workdir_lock`): a second trainer, or an
    evaluation of it, is refused at once with the holder's pid, host and start time.

    Resumes from the newest readable checkpoint in `workdir` if there is one, exactly where it
    stopped. SIGTERM or SIGINT finishes the current step, saves and raises Preempted. Returns a
    summary with the final state, the best checkpoint's step and why training stopped.

    Every record (`train.writers`) goes to `<workdir>/metrics.jsonl`, to TensorBoard event files
    under `<workdir>/tensorboard/` (unless `log.tensorboard` is off), to the console, and to
    each of `writers`: callables, or objects with `write(record)` (on process 0 only).
    `console=False` keeps the progress bar and the per-evaluation lines off the terminal (for
    programs that train many runs and report on their own); the files are written all the same.
    Resuming with a config that differs from the saved one in more than `RESUMABLE_CHANGES` is
    refused, naming the keys, unless `allow_config_change` (the change then goes into
    `<workdir>/history.jsonl`).
    """
    prepare_workdir(workdir)
    chief_says = print if jax.process_index() == 0 and console else _silent
    with workdir_lock.hold(workdir, exclusive=True, say=chief_says):
        return _fit(config, workdir, model, dataset, console, allow_config_change, writers)


def _fit(config, workdir: str, model, dataset, console: bool,
         allow_config_change: bool, user_writers: Sequence) -> dict:
    # --- setup: everything that can fail on bad input fails here, before any checkpoint is touched
    chief = jax.process_index() == 0
    say = print if chief and console else _silent
    steps_per_epoch = dataset.steps_per_epoch(config.dataset.batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint.every or eval_every
    trainer = Trainer(config, model, steps_per_epoch, dataset.task)
    stopping = EarlyStopping(config.early_stopping, dataset.task, config.dataset.name,
                             ema=trainer.ema_decay > 0)
    profile = Profile(option(config, "profile.start_step", 0),
                      option(config, "profile.num_steps", 1), workdir, num_steps, say)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    dataset.num_examples(config.eval_split)  # a split the dataset lacks is named now
    described = dataset.description()

    # --- resume: the newest checkpoint that reads back whole, and the data position saved with it
    manager, state, step, history = _resume(config, workdir, trainer, steps_per_epoch,
                                            described, allow_config_change, say)
    stopping.replay(history)
    say(dataset.summary())
    say(_starting_line(trainer, step, num_steps, steps_per_epoch, config.dataset.batch_size))
    first_step = step + 1  # logged whatever log_every says: curves start there
    profile.resuming_at(first_step)
    state = trainer.place(state)
    # in-memory data is kept on the devices: each step is sent its batch's row numbers only
    feed = (trainer.device_feed(dataset)
            if step < num_steps and option(config, "dataset.on_device", True) else None)
    put = feed.put if feed else trainer.put
    batches = _batches(dataset, config, step, num_steps, steps_per_epoch, shard, feed)
    first = next(batches, None)
    if chief:  # the curves' plotting library loads while XLA compiles, which frees the GIL
        report.import_plotting_behind()
    compiled = trainer.compile(state, put(first[1]), feed) if first else None
    shown = Console(num_steps, step, ("loss", *trainer.task.metrics), config.eval_split,
                    show=chief and console)
    writers = Writers([JsonLines(workdir), shown, *user_writers] + (
        [TensorBoard(workdir, config.eval_split, history)]
        if chief and option(config, "log.tensorboard", True) else []))

    def _write(record: dict) -> None:
        write_record(writers, history, record, manager, workdir)

    # --- the loop
    stop_reason, pending = None, []  # pending: (step, device metrics) not fetched yet
    with stop_requests() as stop_signals, contextlib.ExitStack() as cleanup:
        cleanup.callback(writers.close)
        cleanup.callback(profile.close)
        if compiled:
            _write(_compile_record(first_step, compiled, trainer))
            batches = itertools.chain([first], batches)
        window_start = time.perf_counter()
        for step, batch in batches:
            preempted = (multihost_utils.reached_preemption_sync_point(step)
                         if jax.process_count() > 1 else bool(stop_signals))
            do_eval = step % eval_every == 0 or step == num_steps
            do_save = step % checkpoint_every == 0 or step == num_steps or preempted
            do_log = do_eval or do_save or step % config.log_every == 0 or step == first_step
            profile.before(step)
            state, metrics = compiled.step(state, put(batch))
            profile.after(step, state)
            shown.advance()
            pending.append((step, metrics))
            if len(pending) > MAX_STEPS_IN_FLIGHT:  # dispatch ahead, but not unboundedly
                pending[-MAX_STEPS_IN_FLIGHT - 1][1]["loss"].block_until_ready()  # one is all
            if not do_log:
                continue
            fetched = [(s, trainer.fetch(m)) for s, m in pending]
            pending = []
            _stop_if_not_finite(fetched, manager)  # before anything is saved
            record = _train_record(step, fetched, trainer, steps_per_epoch, compiled,
                                   time.perf_counter() - window_start if step > first_step
                                   else None)
            canonical = trainer.gather(state) if do_eval or do_save else None
            if do_eval:
                record.update(_evaluate(trainer, canonical, dataset, config, shard))
                stop_reason = stopping.update(record)
            _write(record)
            if do_save or stop_reason:
                checkpoint.save(manager, step, canonical, config.to_dict(),
                                data_position(step, steps_per_epoch, config),
                                stopping.ranking(record), described)
            if preempted:
                checkpoint.wait(manager)
                raise Preempted(stop_signals[0] if stop_signals else signal.SIGTERM, step,
                                str(manager.directory))
            if stop_reason:
                break
            window_start = time.perf_counter()  # evaluating and saving are not training time
    checkpoint.wait(manager)

    # --- what the run leaves behind
    if stop_reason:
        say(stop_reason)
    title = f"{config.model.name} on {config.dataset.name}: {os.path.abspath(workdir)}"
    curves = report.plot_curves(workdir, title, config.eval_split) if chief else None
    return {"state": trainer.gather(state), "trainer": trainer, "best_step": manager.best_step(),
            "latest_step": manager.latest_step(), "stop_reason": stop_reason or "finished",
            "history": history, "curves": curves, "checkpoints": str(manager.directory)}


# --- the loop's helpers, in the order it calls them

class EarlyStopping:
    """Tracks the best value of `early_stopping.monitor` and the evaluations since it; the same
    metric ranks the checkpoints to keep."""

    def __init__(self, cfg, task: str, dataset_name: str, ema: bool):
        self.monitor, self.patience = cfg.monitor, cfg.patience
        if self.monitor not in monitored(task, ema):
            raise ValueError(f"early_stopping.monitor={self.monitor!r} is not one of "
                             f"{', '.join(monitored(task, ema))} (what a {task} dataset such "
                             f"as {dataset_name} is evaluated on"
                             f"{'' if ema else ' without optimizer.ema_decay'})")
        self.better = operator.lt if checkpoint.metric_mode(self.monitor) == "min" else operator.gt
        self.best, self.bad_evals = None, 0

    def replay(self, history: list[dict]) -> None:
        for record in history:
            if self.monitor in record:
                self.update(record)

    def update(self, record: dict) -> str | None:
        """Takes an evaluated record; returns why training should stop, or None."""
        value = record[self.monitor]
        if self.best is None or self.better(value, self.best):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        if self.patience and self.bad_evals >= self.patience:
            return (f"early stopping: {self.monitor} did not improve on {self.best:.4f} for "
                    f"{self.patience} evaluations")
        return None

    def ranking(self, record: dict) -> dict | None:
        """What a checkpoint saved with `record` is ranked by (None if it was not evaluated)."""
        return {self.monitor: record[self.monitor]} if self.monitor in record else None


def _starting_line(trainer: Trainer, step: int, num_steps: int, steps_per_epoch: int,
                   batch_size: int) -> str:
    if step >= num_steps:
        return (f"this run is finished: its checkpoint at step {step} is the last of its "
                f"{num_steps} steps. To train it further, raise --config.epochs (or "
                f"--config.steps)")
    k = trainer.accumulate_steps
    micro = f", accumulated over {k} micro-batches of {batch_size // k}" if k > 1 else ""
    devices = trainer.mesh.devices.flat
    return (f"training {num_params(trainer.initial_state):,} parameters for {num_steps} steps "
            f"({steps_per_epoch} per epoch, batch {batch_size}{micro}) on "
            f"{trainer.mesh.devices.size} {next(iter(devices)).platform} device(s) in "
            f"{jax.process_count()} process(es), strategy {trainer.strategy}")


def _batches(dataset, config, step: int, num_steps: int, steps_per_epoch: int, shard: dict,
             feed=None):
    """(step number, this process's batch) for every step after `step`, epoch after epoch,
    up to `num_steps` (which may end mid-epoch); with a device `feed`, (step number, the
    global batch's plan) instead."""
    while step < num_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        end = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)
        if feed is None:
            batches = dataset.train_batches(config.dataset.batch_size, seed=config.seed,
                                            epoch=epoch, start=offset, **shard)
        else:
            batches = dataset.train_plans(config.dataset.batch_size, seed=config.seed,
                                          epoch=epoch, start=offset)
        for batch in itertools.islice(batches, end - offset):
            step += 1
            yield step, batch


def _compile_record(step: int, compiled, trainer: Trainer) -> dict:
    """The compile time, once; XLA's FLOP count of a step (all devices) where it has one."""
    record = {"step": step, "time": time.time(), "compile_s": compiled.seconds}
    if compiled.flops:
        record["flops_per_step"] = compiled.flops * trainer.mesh.devices.size
    return record


def write_record(writers: Writers, history: list, record: dict, manager, workdir: str) -> None:
    """Keeps `record` in `history` and hands it to `writers`; a disk that refuses it is named,
    with the checkpoints already saved waited for."""
    history.append(record)
    try:
        writers.write(record)
    except OSError as e:
        checkpoint.wait(manager)
        raise checkpoint.CheckpointWriteError(
            f"could not write the metrics of step {record['step']} into {workdir} "
            f"({e.strerror}); the checkpoints in {manager.directory} are intact. Free space "
            f"or make the work directory writable, then rerun to resume") from e


def _stop_if_not_finite(fetched: list[tuple[int, dict]], manager) -> None:
    for step, metrics in fetched:
        bad = next((k for k, v in metrics.items() if not math.isfinite(v)), None)
        if bad is None:
            continue
        checkpoint.wait(manager)
        last = manager.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {manager.directory}"
                if last is not None else "no checkpoint had been saved yet")
        raise Diverged(f"{bad} became {metrics[bad]} at step {step}; stopped, and {kept}. Try a "
                       f"lower optimizer.learning_rate or optimizer.clip_norm", step)


def _train_record(step: int, fetched: list[tuple[int, dict]], trainer: Trainer,
                  steps_per_epoch: int, compiled, seconds: float | None) -> dict:
    """One record of the steps since the last: their mean loss (and objective, and the task's
    metrics), the learning rate and norms at the last, and, over `seconds` (None for the
    first step, whose time holds one-off costs), the throughput."""
    last = fetched[-1][1]
    means = ["loss", "objective", *trainer.task.metrics]
    record = {"step": step, "epoch": step / steps_per_epoch, "time": time.time(),
              **{f"train_{k}": float(np.mean([m[k] for _, m in fetched]))
                 for k in means if k in last},
              "learning_rate": float(trainer.learning_rate(step - 1)),
              **{k: last[k] for k in sorted(last, key=lambda k: (k != "grad_norm", k))
                 if k not in means}}
    if seconds is not None:
        record.update(speed(len(fetched), seconds, trainer.batch_size, compiled.flops,
                            list(trainer.mesh.devices.flat)))
    return record


def _evaluate(trainer: Trainer, state, dataset, config, shard: dict) -> dict:
    """`eval_<metric>` of the raw weights on `eval_split`; with a moving average of the weights,
    `eval_ema_<metric>` of it as well."""
    out = {}
    for weights in ("raw", "ema") if trainer.ema_decay else ("raw",):
        result = trainer.evaluate(state, dataset.eval_batches(
            config.eval_split, config.dataset.eval_batch_size, **shard), weights)
        prefix = "eval_ema_" if weights == "ema" else "eval_"
        out.update({prefix + k: v for k, v in result.items() if k != "examples"})
    return out


def _silent(*_, **__) -> None:
    pass


def option(config, dotted: str, default):
    """`config.<dotted>`, or `default` for a config saved before that field existed."""
    node = config
    for name in dotted.split("."):
        if not hasattr(node, "keys") or name not in node:
            return default
        node = node[name]
    return node


def _resume(config, workdir: str, trainer: Trainer, steps_per_epoch: int, described: dict,
            allow_config_change: bool, say):
    """(manager, state, step, history): the newest checkpoint that reads back whole (or the
    trainer's initial state at step 0) and the metrics records up to its step."""
    if jax.process_index() == 0:
        checkpoint.remove_incomplete(workdir, say)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("descent: checkpoints cleaned")
    manager = checkpoint.open_manager(workdir, keep=config.checkpoint.keep,
                                      keep_best=config.checkpoint.keep_best,
                                      monitor=config.early_stopping.monitor)
    state, step = trainer.initial_state, 0
    resumed = checkpoint.restore_latest_good(manager, state, say)
    if resumed is not None:
        state, step, position = resumed
        _check_config_change(config.to_dict(), checkpoint.saved_config(manager, step), step,
                             workdir, allow_config_change, say)
        _check_data_change(checkpoint.saved_dataset(manager, step), described, step, workdir,
                           allow_config_change)
        say(f"resumed from the checkpoint at step {step} in {manager.directory}")
        if position != data_position(step, steps_per_epoch, config):
            say("warning: dataset.batch_size or seed differ from the run that saved this "
                "checkpoint, so the data order differs from an uninterrupted run")
    history = [r for r in report.read_metrics(workdir) if r["step"] <= step]
    if jax.process_index() == 0:
        _rewrite_metrics(workdir, history)
    return manager, state, step, history


def _check_config_change(now: dict, saved: dict, step: int, workdir: str, allowed: bool,
                         say) -> None:
    """Refuses to resume under another config (the saved configs would lie about what ran),
    unless `allowed`: then the change is recorded in the work directory's history."""
    # as saved: through JSON (tuples come back as lists); a key the saved config lacks is one
    # added to descent's configs since, at its default, not a change of what ran
    before, after = flat(saved), flat(json.loads(json.dumps(now)))
    changed = {k: (before[k], after.get(k)) for k in sorted(before)
               if before[k] != after.get(k) and k not in RESUMABLE_CHANGES}
    if not changed:
        return
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
    if not allowed:
        raise ValueError(f"the checkpoint at step {step} in {workdir} was trained with another "
                         f"config ({listed}); resume with the config it was saved with, use "
                         f"another --workdir, or pass --allow-config-change to go on and record "
                         f"the change")
    say(f"config changed on resume at step {step}: {listed} (recorded in {HISTORY_FILE})")
    if jax.process_index() == 0:
        report.append_line(os.path.join(workdir, HISTORY_FILE), {
            "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "changed": {k: list(v) for k, v in changed.items()}})


def _check_data_change(saved: dict | None, now: dict, step: int, workdir: str,
                       allowed: bool) -> None:
    """Refuses to resume on other data than the checkpoint's (other files, other classes),
    unless `allowed`."""
    if saved is None or allowed:
        return
    changed = [k for k in ("fingerprint", "classes", "examples") if saved.get(k) != now.get(k)]
    if changed:
        raise ValueError(f"the checkpoint at step {step} in {workdir} was trained on other data "
                         f"than {now.get('source', now['name'])} is now ({', '.join(changed)} "
                         f"differ); resume on the data it was trained on, use another "
                         f"--workdir, or pass --allow-config-change to go on")


def flat(tree, prefix: str = "") -> dict:
    """{"optimizer.learning_rate": 0.001, ...} of a nested dict (a config's `to_dict()`)."""
    out = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                   else {f"{prefix}{key}": value})
    return out


def data_position(step: int, steps_per_epoch: int, config) -> dict:
    """Where the data stands after `step` updates: the epoch and batch of the next batch.

    Batches are a pure function of (seed, epoch), so this is all a resumed run needs.
    """
    epoch, batch = divmod(step, steps_per_epoch)
    return {"epoch": epoch, "batch": batch, "seed": config.seed,
            "batch_size": config.dataset.batch_size}


@contextlib.contextmanager
def stop_requests():
    """Collects SIGTERM and SIGINT in a list instead of dying, while training runs.

    Only in a single process's main thread: with several processes JAX's preemption service
    takes SIGTERM and agrees on a step with the others (`reached_preemption_sync_point`).
    """
    received = []
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield received
        return
    catch = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in catch}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _rewrite_metrics(workdir: str, records: list[dict]) -> None:
    """Keeps only the records up to the resumed step; written whole, then renamed into place."""
    path = os.path.join(workdir, report.METRICS_FILE)
    if not os.path.exists(path):
        return
    report.write_atomically(path, "".join(report.json_line(r) for r in records))
