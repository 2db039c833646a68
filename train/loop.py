"""The training loop: one function that reads top to bottom.

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
import os
import signal
import tempfile
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from flax import nnx
from tqdm import tqdm

from train import checkpoint, report, workdir_lock
from train.state import num_params
from train.trainer import Trainer, total_steps


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


def monitored(task: str) -> tuple[str, ...]:
    """The metrics early stopping can watch (and best checkpoints be ranked by) for `task`."""
    return ("eval_accuracy", "eval_loss") if task == "classification" else ("eval_loss",
                                                                            "eval_mae")


# Config keys a resumed run may change freely: how long it runs, and where (devices, data path).
RESUMABLE_CHANGES = ("epochs", "steps", "parallel.strategy", "parallel.mesh", "dataset.data_dir")
HISTORY_FILE = "history.jsonl"


def fit(config, workdir: str, model: nnx.Module, dataset, *, console: bool = True,
        allow_config_change: bool = False) -> dict:
    """Trains `model` on `dataset` as `config` says; checkpoints, metrics and plot go to `workdir`.

    The work directory is locked while it trains (`train.workdir_lock`): a second trainer, or an
    evaluation of it, is refused at once with the holder's pid, host and start time.

    Resumes from the newest readable checkpoint in `workdir` if there is one, exactly where it
    stopped. SIGTERM or SIGINT finishes the current step, saves and raises Preempted. Returns a
    summary with the final state, the best checkpoint's step and why training stopped.
    `console=False` keeps the progress bar and the per-evaluation lines off the terminal (for
    programs that train many runs and report on their own); the files are written all the same.
    Resuming with a config that differs from the saved one in more than `RESUMABLE_CHANGES` is
    refused, naming the keys, unless `allow_config_change` (the change then goes into
    `<workdir>/history.jsonl`).
    """
    prepare_workdir(workdir)
    chief_says = print if jax.process_index() == 0 and console else (lambda *a, **k: None)
    with workdir_lock.hold(workdir, exclusive=True, say=chief_says):
        return _fit(config, workdir, model, dataset, console, allow_config_change)


def _fit(config, workdir: str, model: nnx.Module, dataset, console: bool,
         allow_config_change: bool) -> dict:
    # --- setup: everything that can fail on bad input fails here, before any checkpoint is touched
    chief = jax.process_index() == 0
    say = print if chief and console else (lambda *a, **k: None)
    batch_size = config.dataset.batch_size
    steps_per_epoch = dataset.steps_per_epoch(batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint.every or eval_every
    monitor = config.early_stopping.monitor
    if monitor not in monitored(dataset.task):
        raise ValueError(f"early_stopping.monitor={monitor!r} is not one of "
                         f"{', '.join(monitored(dataset.task))} (what a {dataset.task} dataset "
                         f"such as {config.dataset.name} is evaluated on)")
    better = (lambda a, b: a < b) if checkpoint.metric_mode(monitor) == "min" else (
        lambda a, b: a > b)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    trainer = Trainer(config, model, steps_per_epoch, dataset.task)

    # --- resume: the newest checkpoint that reads back whole, and the data position saved with it
    if chief:
        checkpoint.remove_incomplete(workdir, say)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("descent: checkpoints cleaned")
    manager = checkpoint.open_manager(workdir, keep=config.checkpoint.keep,
                                      keep_best=config.checkpoint.keep_best, monitor=monitor)
    config_dict = config.to_dict()
    state, step = trainer.initial_state, 0
    resumed = checkpoint.restore_latest_good(manager, state, say)
    if resumed is not None:
        state, step, position = resumed
        _check_config_change(config_dict, checkpoint.saved_config(manager, step), step, workdir,
                             allow_config_change, say)
        say(f"resumed from the checkpoint at step {step} in {manager.directory}")
        if position != data_position(step, steps_per_epoch, config):
            say("warning: dataset.batch_size or seed differ from the run that saved this "
                "checkpoint, so the data order differs from an uninterrupted run")
    history = [r for r in report.read_metrics(workdir) if r["step"] <= step]
    if chief:
        _rewrite_metrics(workdir, history)
    best, bad_evals = None, 0
    for value in (r[monitor] for r in history if monitor in r):
        best, bad_evals = (value, 0) if best is None or better(value, best) else (best, bad_evals + 1)
    if step >= num_steps:
        say(f"this run is finished: its checkpoint at step {step} is the last of its {num_steps} "
            f"steps. To train it further, raise --config.epochs (or --config.steps)")
    else:
        say(f"training {num_params(state):,} parameters for {num_steps} steps "
            f"({steps_per_epoch} per epoch, batch {batch_size}) on {trainer.mesh.devices.size} "
            f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es), "
            f"strategy {trainer.strategy}")
        if config.loss.get("label_smoothing", 0):
            say(f"the train loss includes label smoothing {config.loss.label_smoothing:g}; the "
                f"{config.eval_split} loss does not")
    state = trainer.place(state)

    # --- the loop
    stop_reason = "finished"
    pending = []  # (step, device metrics) not yet fetched: fetching every step would stall dispatch
    window_start, window_steps = time.perf_counter(), 0
    first_step = step + 1  # logged on its own: it includes compilation, and curves start there
    bar = _progress_bar(num_steps, step, chief and console, leave=False)  # until compiled
    with stop_requests() as stop_signals:
        while step < num_steps and stop_reason == "finished":
            epoch, offset = divmod(step, steps_per_epoch)
            batches = dataset.train_batches(batch_size, seed=config.seed, epoch=epoch,
                                            start=offset, **shard)
            end = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)  # may end mid-epoch
            for batch in itertools.islice(batches, end - offset):
                state, metrics = trainer.train_step(state, trainer.put(batch))
                step += 1
                window_steps += 1
                pending.append((step, metrics))
                if len(pending) > MAX_STEPS_IN_FLIGHT:
                    jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT - 1][1])
                bar.update()
                preempted = (multihost_utils.reached_preemption_sync_point(step)
                             if jax.process_count() > 1 else bool(stop_signals))
                do_eval = step % eval_every == 0 or step == num_steps
                do_save = step % checkpoint_every == 0 or step == num_steps or preempted
                if not (do_eval or do_save or step % config.log_every == 0 or step == first_step):
                    continue

                # Fetch the pending metrics; a NaN or Inf stops here, before anything is saved.
                fetched = [(s, trainer.fetch(m)) for s, m in pending]
                pending = []
                for s, m in fetched:
                    if not all(math.isfinite(v) for v in m.values()):
                        bar.close()
                        checkpoint.wait(manager)
                        last = manager.latest_step()
                        kept = (f"the last good checkpoint (step {last}) is kept in "
                                f"{manager.directory}" if last is not None
                                else "no checkpoint had been saved yet")
                        what = next(k for k, v in m.items() if not math.isfinite(v))
                        raise Diverged(f"{what} became {m[what]} at step {s}; stopped, and {kept}. "
                                       f"Try a lower optimizer.learning_rate or optimizer.clip_norm",
                                       s)
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "epoch": step / steps_per_epoch,
                          **{_train_key(k): float(np.mean([m[k] for _, m in fetched]))
                             for k in _step_metric_order(fetched[0][1], trainer.task)},
                          "learning_rate": float(trainer.learning_rate(step - 1))}
                if step == first_step:  # compilation, not throughput
                    record["first_step_s"] = elapsed
                    bar.close()  # a new bar, whose rate and ETA count only compiled steps
                    bar = _progress_bar(num_steps, step, chief and console)
                else:
                    record["examples_per_s"] = window_steps * batch_size / elapsed
                bar.set_postfix({_SHORT.get(k, k): f"{record['train_' + k]:.4f}"
                                 for k in ("loss", *trainer.task.metrics)})

                # once, for evaluation and the checkpoint (a saved run's stop implies do_eval)
                canonical = trainer.gather(state) if do_eval or do_save else None
                if do_eval:
                    result = trainer.evaluate(canonical, dataset.eval_batches(
                        config.eval_split, config.dataset.eval_batch_size, **shard))
                    record.update({f"eval_{k}": v for k, v in result.items() if k != "examples"})
                    if best is None or better(record[monitor], best):
                        best, bad_evals = record[monitor], 0
                    else:
                        bad_evals += 1
                    if chief and console:
                        names = ("loss", *trainer.task.metrics)
                        bar.write(f"step {step:>6} epoch {record['epoch']:6.2f}  train "
                                  + " ".join(f"{_SHORT.get(k, k)} {record['train_' + k]:.4f}"
                                             for k in names)
                                  + f"  {config.eval_split} "
                                  + " ".join(f"{_SHORT.get(k, k)} {result[k]:.4f}" for k in names))
                    patience = config.early_stopping.patience
                    if patience and bad_evals >= patience:
                        stop_reason = (f"early stopping: {monitor} did not improve on {best:.4f} "
                                       f"for {patience} evaluations")
                if chief:
                    _append_metrics(workdir, record, manager)
                    history.append(record)
                if do_save or stop_reason != "finished":
                    saved_metrics = {monitor: record[monitor]} if monitor in record else None
                    checkpoint.save(manager, step, canonical, config_dict,
                                    data_position(step, steps_per_epoch, config), saved_metrics)
                if preempted:
                    bar.close()
                    checkpoint.wait(manager)
                    signum = stop_signals[0] if stop_signals else signal.SIGTERM
                    raise Preempted(signum, step, str(manager.directory))
                if stop_reason != "finished":
                    break
                window_start, window_steps = time.perf_counter(), 0  # eval is not training time
    bar.close()
    checkpoint.wait(manager)

    # --- what the run leaves behind
    if stop_reason != "finished":
        say(stop_reason)
    title = f"{config.model.name} on {config.dataset.name}: {os.path.abspath(workdir)}"
    curves = report.plot_curves(workdir, title, config.eval_split) if chief else None
    return {"state": trainer.gather(state), "trainer": trainer, "best_step": manager.best_step(),
            "latest_step": manager.latest_step(), "stop_reason": stop_reason,
            "history": history, "curves": curves, "checkpoints": str(manager.directory)}


_SHORT = {"accuracy": "acc"}  # console abbreviations


def _check_config_change(now: dict, saved: dict, step: int, workdir: str, allowed: bool,
                         say) -> None:
    """Refuses to resume under another config (the saved configs would lie about what ran),
    unless `allowed`: then the change is recorded in the work directory's history."""
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                       else {f"{prefix}{key}": value})
        return out

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


def _progress_bar(total: int, done: int, show: bool, leave: bool = True) -> tqdm:
    """tqdm rates (and so the ETA) from the steps since `done`, over the time since now."""
    return tqdm(total=total, initial=done, unit="step", disable=None if show else True,
                dynamic_ncols=True, leave=leave)


def _step_metric_order(metrics: dict, task) -> list[str]:
    """Loss, the task's metrics, the global norms, then per-layer norms by path."""
    first = ["loss", *task.metrics, "grad_norm", "param_norm"]
    return [k for k in first if k in metrics] + sorted(k for k in metrics if k not in first)


def _train_key(metric: str) -> str:
    """Step metrics in a record: `train_loss`, `train_accuracy`, but `grad_norm` as it is."""
    return metric if metric.startswith(("grad_norm", "param_norm")) else f"train_{metric}"


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


def _append_metrics(workdir: str, record: dict, manager) -> None:
    try:
        report.append_metrics(workdir, record)
    except OSError as e:
        checkpoint.wait(manager)
        raise checkpoint.CheckpointWriteError(
            f"could not append to {os.path.join(workdir, report.METRICS_FILE)} ({e.strerror}); "
            f"the checkpoints in {manager.directory} are intact. Free space or make the work "
            f"directory writable, then rerun to resume") from e


def _rewrite_metrics(workdir: str, records: list[dict]) -> None:
    """Keeps only the records up to the resumed step; written whole, then renamed into place."""
    path = os.path.join(workdir, report.METRICS_FILE)
    if not os.path.exists(path):
        return
    report.write_atomically(path, "".join(report.json_line(r) for r in records))
