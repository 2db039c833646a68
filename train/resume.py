"""Where a run picks up: its work directory made and proved writable, its checkpoints opened
(what an interrupted save left removed), the newest good checkpoint restored, and the checks
that the config and the data are those it was trained with. Early stopping, replayed from the
records a resumed run keeps, lives here too: its metric also ranks the checkpoints.

A group of runs (`train.many`) saves its runs one after another, so a kill can leave runs whose
newest checkpoints differ by one save. The group resumes from the newest step that every run
holds a good checkpoint at; a run's checkpoints newer than that are removed, since they were
written by this same group (its runs' seeds and learning rates, saved with each checkpoint's
data position) and training from the common step writes them again bit for bit. Checkpoints
newer than the common step that another group or a run alone wrote are never removed: the
resume is refused, naming them. With no step common to every run, it is refused naming each
run's steps (docs/design.md, section 23).
"""
import contextlib
import json
import logging
import operator
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import jax
from jax.experimental import multihost_utils

from train import checkpoint, report, storage, warm_start
from train.state import TrainState
from train.workdir import check as workdir_check

log = logging.getLogger(__name__)

# Config keys a resumed run may change freely: how long it runs, and where (devices, where its
# data is: the data itself is checked by its fingerprint).
RESUMABLE_CHANGES = ("epochs", "steps", "parallel.strategy", "parallel.mesh", "dataset.data_dir",
                     "dataset.path", "dataset.on_device", "compile_cache",
                     "init_from")  # read at step 0 only
HISTORY_FILE = "history.jsonl"


def prepare_workdir(workdir: str) -> str:
    """Checks `workdir` (a name orbax can take, no link inside: `train.workdir.check`), then
    creates it and proves it writable, before any work is done; returns its absolute path."""
    path = workdir_check(workdir)
    if storage.is_url(path):
        storage.probe_writable(path)
        return path
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")  # never a link
        try:  # a byte and its sync: a full disk still makes empty files
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} cannot be written ({e.strerror}); "
                         f"pass a --workdir you can write to") from None
    return path


@contextlib.contextmanager
def open_checkpoints(workdir: str, config, group: bool = False):
    """The run's `Checkpoints`, once what an interrupted save left is removed; `group` for a
    run trained in a group of runs."""
    if jax.process_index() == 0:
        checkpoint.remove_incomplete(workdir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("descent: checkpoints cleaned")
    # a group keeps two latest checkpoints at least: a kill between two runs' saves must leave
    # a step that every run still holds (docs/design.md, section 23)
    keep = config.checkpoint.keep if not group else max(config.checkpoint.keep, 2)
    with checkpoint.Checkpoints(workdir, keep=keep,
                                keep_best=config.checkpoint.keep_best,
                                monitor=config.early_stopping.monitor) as checkpoints:
        yield checkpoints


def resume(checkpoints: Sequence[checkpoint.Checkpoints], configs: Sequence,
           workdirs: Sequence[str], initial_states: Sequence[TrainState], described: dict,
           steps_per_epoch: int, allow_config_change: bool, info: int = logging.INFO,
           starts: Sequence[warm_start.Source | None] = ()
           ) -> tuple[list[TrainState], int, list[list[dict]]]:
    """(states, step, histories): a run alone's newest checkpoint that reads back whole, a
    group's at the newest step every run holds one at (or every run's initial state at step
    0, warm-started where its config says `init_from`: from `starts`, planned before, or
    planned now), and each run's metrics records up to that step (`metrics.jsonl` is cut
    there). A run whose config or data changed since its checkpoint is refused unless
    `allow_config_change`; `info` is the level of the messages."""
    ahead = [[] for _ in checkpoints]  # a group's checkpoints newer than the step resumed
    if len(checkpoints) == 1:
        found = [checkpoints[0].restore_latest_good(initial_states[0])]
        step = found[0][1] if found[0] is not None else 0
    else:
        step, found, ahead = _restore_common(checkpoints, workdirs, initial_states,
                                             group_of(configs))
    states = []
    starts = list(starts) or [None] * len(configs)
    for saved, config, workdir, like, resumed, start in zip(checkpoints, configs, workdirs,
                                                             initial_states, found, starts):
        if resumed is None:
            if config.init_from:
                start = start or warm_start.plan(config.init_from, like, config.model.name)
                like = warm_start.load(start, like, info)
            states.append(like)
            continue
        state, _, position = resumed
        _check_config_change(config.to_dict(), saved.saved_config(step), step, workdir,
                             allow_config_change, info)
        _check_data_change(saved.saved_dataset(step), described, step, workdir,
                           allow_config_change)
        log.log(info, "resumed from the checkpoint at step %d in %s", step, saved.directory)
        expected = data_position(step, steps_per_epoch, config)
        if any(position.get(k) != expected[k] for k in ("epoch", "batch", "seed",
                                                          "batch_size")):
            log.warning("dataset.batch_size or seed differ from the run that saved this "
                        "checkpoint, so the data order differs from an uninterrupted run")
        states.append(state)
    for saved, config, workdir, newer in zip(checkpoints, configs, workdirs, ahead):
        if newer and not allow_config_change:  # removed to be written again: by this config
            _check_config_change(config.to_dict(), saved.saved_config(newer[-1]), newer[-1],
                                 workdir, False, info)
    for saved, newer in zip(checkpoints, ahead):  # every check passed: only now removed
        _remove(saved, newer)
    histories = []
    for workdir in workdirs:
        histories.append([r for r in report.read_metrics(workdir) if r["step"] <= step])
        if jax.process_index() == 0:
            _rewrite_metrics(workdir, histories[-1])
    return states, step, histories


def group_of(configs: Sequence) -> list[list] | None:
    """What names a group of runs trained as one program: each run's seed and learning rate,
    in order (the program's results depend on its runs); None for a run alone."""
    if len(configs) == 1:
        return None
    return [[c.seed, c.optimizer.learning_rate] for c in configs]


def _restore_common(checkpoints: Sequence[checkpoint.Checkpoints], workdirs: Sequence[str],
                    initial_states: Sequence[TrainState], group: list
                    ) -> tuple[int, list[tuple | None], list[list[int]]]:
    """(step, each run's (state, step, data position) or None at step 0, each run's steps
    newer than it): the newest step at which every run of the group holds a checkpoint that
    reads back whole. A damaged one is set aside and the search goes on; the newer ones are
    proved this group's (`_check_ahead`), to be removed once the resume's checks pass."""
    while True:
        held = [set(_steps(c)) for c in checkpoints]
        step = _newest_common(held, workdirs)
        found = [None] * len(checkpoints)
        if step:
            found = [_restore_at(c, step, like) for c, like in zip(checkpoints, initial_states)]
            if any(f is None for f in found):  # one was set aside: look again
                continue
        ahead = [sorted(s for s in steps if s > step) for steps in held]
        for saved, newer, workdir in zip(checkpoints, ahead, workdirs):
            _check_ahead(saved, step, newer, workdir, group)
        return step, found, ahead


def _steps(saved: checkpoint.Checkpoints) -> list[int]:
    saved.manager.reload()
    return saved.manager.all_steps()


def _newest_common(held: list[set[int]], workdirs: Sequence[str]) -> int:
    """The newest step every run holds; 0 when a run holds none (the group never finished its
    first save in every run). Refuses runs that hold checkpoints but none at one step."""
    if not all(held):
        return 0
    common = set.intersection(*held)
    if common:
        return max(common)
    listed = "; ".join(f"{w}: {', '.join(map(str, sorted(h)))}" for w, h in zip(workdirs, held))
    raise ValueError(f"the runs' work directories hold no checkpoint at a step common to all "
                     f"({listed}), so they cannot resume as one program; resume each with "
                     f"descent train --workdir <its directory> (without --seeds or --sweep), "
                     f"or train the group in new work directories")


def _restore_at(saved: checkpoint.Checkpoints, step: int, like: TrainState) -> tuple | None:
    """(state, step, data position) of the checkpoint at `step`, or None when it cannot be read
    back whole: it is then set aside, as a run alone's would be."""
    try:
        state = saved.restore(step, like)
        return state, step, checkpoint.saved_data_position(saved.manager, step)
    except checkpoint.IncompatibleCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001 - any read failure means this one is damaged
        checkpoint.set_aside(saved.manager, step, e)
        return None


def _check_ahead(saved: checkpoint.Checkpoints, common: int, ahead: list[int], workdir: str,
                 group: list) -> None:
    """Refuses a run's checkpoints at `ahead` (newer than `common`, the step the group resumes
    from) unless each is this group's: saved by the same runs (`group_of`), so that training
    from `common` writes it again bit for bit."""
    for step in ahead:
        try:
            position = checkpoint.saved_data_position(saved.manager, step)
        except Exception:  # noqa: BLE001 - an unreadable one cannot prove whose it is
            position = {}
        if position.get("group") != group:
            raise ValueError(
                f"{os.path.join(saved.directory, str(step))} is newer than step {common}, the "
                f"newest every run of this group holds, and was not saved by this group of "
                f"{len(group)} runs, so descent keeps it and stops; resume that run alone with "
                f"descent train --workdir {workdir}, or train the group in new work directories")


def _remove(saved: checkpoint.Checkpoints, ahead: list[int]) -> None:
    """Removes the checkpoints at `ahead`, which `_check_ahead` proved this group's."""
    if jax.process_index() != 0 or not ahead:
        return
    for step in ahead:
        # renamed first, as orbax names a save under way: a kill mid-removal leaves what the next
        # start removes (`checkpoint.remove_incomplete`), never half a checkpoint at its step
        gone = os.path.join(saved.directory, f"{step}.orbax-checkpoint-tmp-superseded")
        os.rename(os.path.join(saved.directory, str(step)), gone)
        shutil.rmtree(gone)
        log.info("removed the checkpoint at step %d in %s: the group resumes from an earlier "
                 "step every run holds, and writes it again", step, saved.directory)
    saved.manager.reload()


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


def data_position(step: int, steps_per_epoch: int, config, group: list | None = None) -> dict:
    """Where the data stands after `step` updates: the epoch and batch of the next batch, and,
    for a run of a group, the group (`group_of`), which says whose checkpoint it is.

    Batches are a pure function of (seed, epoch), so this is all a resumed run needs.
    """
    epoch, batch = divmod(step, steps_per_epoch)
    position = {"epoch": epoch, "batch": batch, "seed": config.seed,
                "batch_size": config.dataset.batch_size}
    return position if group is None else {**position, "group": group}


def _rewrite_metrics(workdir: str, records: list[dict]) -> None:
    """Keeps only the records up to the resumed step; written whole, then renamed into place."""
    path = os.path.join(workdir, report.METRICS_FILE)
    if not (storage.exists(path) if storage.is_url(path) else os.path.exists(path)):
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
