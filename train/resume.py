"""Where a run picks up: its work directory made and proved writable, its checkpoints opened
(what an interrupted save left removed), the newest good checkpoint restored, and the checks
that the config and the data are those it was trained with. Early stopping, replayed from the
records a resumed run keeps, lives here too: its metric also ranks the checkpoints.
"""
import contextlib
import json
import logging
import operator
import os
import tempfile
import time
from collections.abc import Sequence

import jax
from jax.experimental import multihost_utils

from train import checkpoint, report
from train.state import TrainState

log = logging.getLogger(__name__)

# Config keys a resumed run may change freely: how long it runs, and where (devices, data path).
RESUMABLE_CHANGES = ("epochs", "steps", "parallel.strategy", "parallel.mesh", "dataset.data_dir",
                     "dataset.on_device")
HISTORY_FILE = "history.jsonl"


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


@contextlib.contextmanager
def open_checkpoints(workdir: str, config):
    """The run's `Checkpoints`, once what an interrupted save left is removed."""
    if jax.process_index() == 0:
        checkpoint.remove_incomplete(workdir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("descent: checkpoints cleaned")
    with checkpoint.Checkpoints(workdir, keep=config.checkpoint.keep,
                                keep_best=config.checkpoint.keep_best,
                                monitor=config.early_stopping.monitor) as checkpoints:
        yield checkpoints


def resume(checkpoints: Sequence[checkpoint.Checkpoints], configs: Sequence,
           workdirs: Sequence[str], initial_states: Sequence[TrainState], described: dict,
           steps_per_epoch: int, allow_config_change: bool, info: int = logging.INFO
           ) -> tuple[list[TrainState], int, list[list[dict]]]:
    """(states, step, histories): every run's newest checkpoint that reads back whole, all at
    one step (or every run's initial state at step 0), and each run's metrics records up to
    that step (`metrics.jsonl` is cut there). A run whose config or data changed since its
    checkpoint is refused unless `allow_config_change`; `info` is the level of the messages."""
    found = [c.restore_latest_good(like) for c, like in zip(checkpoints, initial_states)]
    steps = [f[1] if f is not None else 0 for f in found]
    if len(set(steps)) > 1:
        listed = ", ".join(f"{w}: {s or 'none'}" for w, s in zip(workdirs, steps))
        raise ValueError(f"the runs' work directories hold their latest checkpoints at "
                         f"different steps ({listed}); resuming them as one program needs one "
                         f"step for all. Resume them one by one with descent train, or use new "
                         f"work directories")
    step, states = steps[0], []
    for saved, config, workdir, like, resumed in zip(checkpoints, configs, workdirs,
                                                      initial_states, found):
        if resumed is None:
            states.append(like)
            continue
        state, _, position = resumed
        _check_config_change(config.to_dict(), saved.saved_config(step), step, workdir,
                             allow_config_change, info)
        _check_data_change(saved.saved_dataset(step), described, step, workdir,
                           allow_config_change)
        log.log(info, "resumed from the checkpoint at step %d in %s", step, saved.directory)
        if position != data_position(step, steps_per_epoch, config):
            log.warning("dataset.batch_size or seed differ from the run that saved this "
                        "checkpoint, so the data order differs from an uninterrupted run")
        states.append(state)
    histories = []
    for workdir in workdirs:
        histories.append([r for r in report.read_metrics(workdir) if r["step"] <= step])
        if jax.process_index() == 0:
            _rewrite_metrics(workdir, histories[-1])
    return states, step, histories


def _check_config_change(now: dict, saved: dict, step: int, workdir: str, allowed: bool,
                         info: int) -> None:
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
    log.log(info, "config changed on resume at step %d: %s (recorded in %s)", step, listed,
            HISTORY_FILE)
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


def _rewrite_metrics(workdir: str, records: list[dict]) -> None:
    """Keeps only the records up to the resumed step; written whole, then renamed into place."""
    path = os.path.join(workdir, report.METRICS_FILE)
    if not os.path.exists(path):
        return
    report.write_atomically(path, "".join(report.json_line(r) for r in records))


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


def monitored(task: str, ema: bool = False) -> tuple[str, ...]:
    """The metrics early stopping can watch (and best checkpoints be ranked by) for `task`; with
    `ema`, those of the weights' moving average too."""
    names = ("accuracy", "loss") if task == "classification" else ("loss", "mae")
    return tuple(f"eval_{prefix}{n}" for prefix in ("", "ema_")[:1 + ema] for n in names)
