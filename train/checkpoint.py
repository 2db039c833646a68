"""Orbax checkpoints: the train state, the config and data position beside it, the metrics
that rank it.

Each checkpoint is a directory `<workdir>/checkpoints/<step>/` with the items `state`
(StandardSave), `config`, `data` (the data position) and `dataset` (its description), JSON.
Orbax writes into a temporary directory and renames it when complete, so a failed or
interrupted save never replaces a good checkpoint. Nothing is pickled. A checkpoint that
cannot be read is moved to `<workdir>/checkpoints-damaged/`, never deleted.

A training run writes through `Checkpoints`, which owns orbax's manager and the thread that
checksums each save; reading (evaluation, restore) needs only a read-only `open_manager`.
"""
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
import zlib

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from train.files import write_atomically
from train.state import TrainState, abstract

log = logging.getLogger(__name__)

DAMAGED_DIR = "checkpoints-damaged"
CHECKSUMS = "descent-checksums.json"  # in each checkpoint's directory, beside orbax's items


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's "Given directory is read only" warning: we open checkpoints read-only on
    purpose, to evaluate or restore, and say so ourselves. It comes through when this module's
    logger shows DEBUG messages (`descent --verbose`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (log.isEnabledFor(logging.DEBUG)
                or not str(record.msg).startswith("Given directory is read only"))


@contextlib.contextmanager
def _without_read_only_notice():
    """Drops the notice while a read-only manager is made, and only then: importing descent
    changes no logging settings."""
    notice = _ReadOnlyNotice()
    logger = absl_logging.get_absl_logger()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


class DamagedCheckpoint(OSError):
    """A checkpoint's files are not what was saved: handled like any unreadable checkpoint."""


class IncompatibleCheckpoint(ValueError):
    """The checkpoint holds another model or optimizer than the one asked for."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (unwritable work directory, full disk)."""


def metric_mode(monitor: str) -> str:
    """'min' for losses and errors, 'max' for everything else (accuracy)."""
    return "min" if monitor.endswith(("loss", "mae", "mse")) else "max"


def open_manager(workdir: str, *, keep: int = 3, keep_best: int = 1,
                 monitor: str = "eval_accuracy", read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest `keep` checkpoints and the best `keep_best` by `monitor`."""
    if not read_only:
        check_retention(keep, keep_best)
    mode = metric_mode(monitor)
    policy = None
    if not read_only:
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=lambda m: m[monitor], reverse=mode == "min", n=keep_best,
                     keep_checkpoints_without_metrics=False),
        ])
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: m[monitor], best_mode=mode, preservation_policy=policy,
        read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1)
    with _without_read_only_notice():
        return ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           "dataset": ocp.JsonCheckpointHandler()})


class Checkpoints:
    """A run's checkpoints in `<workdir>/checkpoints`: orbax's manager, keeping the latest
    `keep` and the best `keep_best` by `monitor`, and one thread that checksums each save's
    files behind training. Nothing runs before it is made; `close` (or leaving a `with`
    block) finishes what was started and ends the thread."""

    def __init__(self, workdir: str, *, keep: int = 3, keep_best: int = 1,
                 monitor: str = "eval_accuracy"):
        self.manager = open_manager(workdir, keep=keep, keep_best=keep_best, monitor=monitor)
        self.directory = str(self.manager.directory)
        # zlib and file reads release the GIL: the checksums cost training next to nothing
        self._checksummer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="descent-checksums")
        self._checksums = None  # the future of the checksums started at the last save
        self._saving = None     # the step of the last save started: what a failure names

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: TrainState, config: dict, data_position: dict,
             metrics: dict | None = None, dataset: dict | None = None) -> None:
        """Starts an asynchronous save; training goes on while orbax writes. The save before it
        is finished first (orbax would wait for it too), and its files are checksummed in the
        thread while this one is written."""
        try:  # an earlier save that failed is named as the one that failed
            self._finish_checksums()
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise _write_error(self.manager, self._saving, e) from e
        self._checksums = self._checksummer.submit(record_checksums, self.manager)
        try:
            items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
                         data=ocp.args.JsonSave(data_position))
            if dataset is not None:  # what rebuilds the dataset: name, options, classes, stats
                items["dataset"] = ocp.args.JsonSave(dataset)
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
            self._saving = step
        except Exception as e:  # noqa: BLE001
            raise _write_error(self.manager, step, e) from e

    def wait(self) -> None:
        """Blocks until every started save is complete on disk, and checksums it."""
        try:
            self._finish_checksums()
            self.manager.wait_until_finished()
            record_checksums(self.manager)
        except Exception as e:  # noqa: BLE001
            raise _write_error(self.manager, self._saving, e) from e

    def close(self) -> None:
        """Lets the save under way complete and ends the thread. Raises nothing: it runs on the
        way out of an error too, and `wait` has named any failure of a run that ended well."""
        try:
            self.wait()
            self.manager.close()
        except Exception as e:  # noqa: BLE001
            log.debug("closing the checkpoints in %s: %s", self.directory, e)
        finally:
            self._checksummer.shutdown(wait=True)

    def restore_latest_good(self, like: TrainState) -> tuple[TrainState, int, dict] | None:
        """`restore_latest_good` of these checkpoints."""
        return restore_latest_good(self.manager, like)

    def restore(self, step: int, like: TrainState) -> TrainState:
        return restore(self.manager, step, like)

    def saved_config(self, step: int) -> dict:
        return saved_config(self.manager, step)

    def saved_dataset(self, step: int) -> dict | None:
        return saved_dataset(self.manager, step)

    def _finish_checksums(self) -> None:
        """Waits for the checksums started at the last save; their failure is raised here."""
        started, self._checksums = self._checksums, None
        if started is not None:
            started.result()


def check_retention(keep: int, keep_best: int) -> None:
    """Refuses `checkpoint.keep` < 1 (every checkpoint would be deleted) or `keep_best` < 0."""
    if keep < 1 or keep_best < 0:
        raise ValueError(f"checkpoint.keep={keep} and keep_best={keep_best}: keep at least 1 "
                         f"latest checkpoint, and keep_best at least 0")


def record_checksums(manager: ocp.CheckpointManager) -> None:
    """Writes `CHECKSUMS` (a CRC-32 of every file) into each committed checkpoint without one,
    so that a later restore notices a flipped bit instead of loading it (process 0 only)."""
    if jax.process_index() != 0:
        return
    for step in _listed_steps(manager):
        directory = os.path.join(str(manager.directory), str(step))
        if os.path.exists(os.path.join(directory, CHECKSUMS)):
            continue
        try:
            write_atomically(os.path.join(directory, CHECKSUMS),
                             json.dumps(_checksums(directory), indent=0))
        except FileNotFoundError:  # retention removed it meanwhile
            continue


def verify_checksums(manager: ocp.CheckpointManager, step: int) -> None:
    """Raises DamagedCheckpoint if a file of checkpoint `step` is missing or no longer matches
    the checksum recorded when it was saved (a checkpoint saved before checksums: unchecked)."""
    directory = os.path.join(str(manager.directory), str(step))
    try:
        with open(os.path.join(directory, CHECKSUMS)) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return
    except (OSError, json.JSONDecodeError) as e:
        raise DamagedCheckpoint(f"its checksum file cannot be read ({e})") from None
    found = _checksums(directory, only=recorded)
    for name, crc in recorded.items():
        if found.get(name) != crc:
            what = "is missing" if name not in found else "does not match its checksum"
            raise DamagedCheckpoint(f"{name} {what}")


def _checksums(directory: str, only: dict | None = None) -> dict[str, str]:
    sums = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel == CHECKSUMS or (only is not None and rel not in only):
                continue
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            sums[rel] = f"{crc:08x}"
    return sums


def _write_error(manager, step, error) -> CheckpointWriteError:
    kept = sorted(s for s in _listed_steps(manager) if step is None or s < step)
    when = f" while saving step {step}" if step is not None else ""
    return CheckpointWriteError(
        f"could not write a checkpoint to {manager.directory}{when} ({_reason(error)}); the "
        f"checkpoints already there are intact (steps {', '.join(map(str, kept)) or 'none'}). "
        f"Free space or make the work directory writable, then rerun to resume")


def _listed_steps(manager) -> list[int]:
    try:
        return [int(n) for n in os.listdir(manager.directory) if n.isdigit()]
    except OSError:
        return []


def _reason(error: BaseException) -> str:
    """The operating system's words for what failed (e.g. "No space left on device")."""
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    text = " ".join(str(e) for e in chain)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO):
        if os.strerror(code) in text:
            return os.strerror(code)
    first = str(chain[-1]).splitlines()[0] if str(chain[-1]) else ""
    return f"{type(chain[-1]).__name__}: {first[:200]}"


def resolve_step(manager: ocp.CheckpointManager, which: str | int = "latest") -> int:
    """'latest', 'best' or a step number -> a step that exists in `manager`."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}; run `descent train` first")
    if which == "latest":
        return manager.latest_step()
    if which == "best":  # no evaluation ranked any checkpoint yet: the latest is the best known
        return manager.best_step() if manager.best_step() is not None else manager.latest_step()
    try:
        step = int(which)
    except ValueError:
        raise ValueError(f"--checkpoint {which!r} is not 'best', 'latest' or a step") from None
    if step not in steps:
        raise ValueError(f"no checkpoint at step {step} in {manager.directory}; "
                         f"saved steps: {', '.join(map(str, sorted(steps)))}")
    return step


def restore(manager: ocp.CheckpointManager, step: int, like: TrainState, *,
            verify: bool = True) -> TrainState:
    """Restores the state at `step` into the structure, shapes and shardings of `like`.

    A checkpoint of another model or optimizer raises IncompatibleCheckpoint naming the
    differing arrays. `like`'s shardings may differ from the saved ones: another device count,
    mesh or strategy. With `verify`, every file is checked against the checksums recorded when
    it was saved, in a thread beside the restore (a mismatch raises DamagedCheckpoint).
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        checked = pool.submit(verify_checksums, manager, step) if verify else None
        state = _restore_state(manager, step, like)
        if checked is not None:
            checked.result()
    return state


def _restore_state(manager: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    saved = _shapes(manager.item_metadata(step)["state"])
    if not saved:
        raise FileNotFoundError(f"the checkpoint at step {step} has no readable array metadata")
    wanted = _shapes(like)
    differences = (
        [f"{p}: checkpoint {saved[p]} vs model {wanted[p]}"
         for p in wanted if p in saved and saved[p] != wanted[p]]
        + [f"{p}: not in the checkpoint" for p in wanted if p not in saved]
        + [f"{p}: not in the model" for p in saved if p not in wanted])
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more"
                                              if len(differences) > 6 else "")
        raise IncompatibleCheckpoint(
            f"the checkpoint at step {step} in {manager.directory} does not fit this "
                         f"model and optimizer ({len(differences)} arrays differ): {shown}. "
                         f"Use the config it was saved with, or another --workdir")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(like))))
    return restored.state


def saved_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config saved with the checkpoint at `step`."""
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def saved_dataset(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The description of the dataset saved with the checkpoint at `step`; None for a
    checkpoint saved before descent stored one (its config names the dataset)."""
    directory = os.path.join(str(manager.directory), str(step), "dataset")
    if not os.path.isdir(directory):
        return None
    return manager.restore(step, args=ocp.args.Composite(dataset=ocp.args.JsonRestore())).dataset


def saved_data_position(manager: ocp.CheckpointManager, step: int) -> dict:
    """Where the data iterator stood after `step`: {"epoch": e, "batch": b} of the next batch."""
    return manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data


def remove_incomplete(workdir: str) -> None:
    """Removes what an interrupted save left (orbax's temporary directories), saying so."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", name):
            log.info("removing an incomplete checkpoint left by an interrupted save: %s", name)
            shutil.rmtree(os.path.join(directory, name))


def restore_latest_good(manager: ocp.CheckpointManager, like: TrainState
                        ) -> tuple[TrainState, int, dict] | None:
    """(state, step, data position) of the newest checkpoint that reads back whole, or None.

    A checkpoint that fails to read (a truncated file, deleted metadata) is moved aside to
    `<workdir>/checkpoints-damaged/` with a warning, and the one before it is tried.
    """
    steps = sorted(set(manager.all_steps()) | set(_listed_steps(manager)), reverse=True)
    for step in steps:
        try:
            state = restore(manager, step, like)
            return state, step, saved_data_position(manager, step)
        except IncompatibleCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this one is damaged
            set_aside(manager, step, e)
    return None


def set_aside(manager: ocp.CheckpointManager, step: int, error: BaseException) -> str:
    """Moves the damaged checkpoint at `step` to `<workdir>/checkpoints-damaged/`, never
    deleting it, and says so; the manager then sees the ones before it."""
    aside = _move_aside(manager, step)
    log.warning("the checkpoint at step %s cannot be read (%s); moved to %s; falling back to "
                "the previous one", step, _reason(error), aside)
    return aside


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
    workdir = os.path.dirname(str(manager.directory))
    target = os.path.join(workdir, DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(str(manager.directory), str(step)), target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"descent: moved checkpoint {step} aside")
    manager.reload()
    return target


def _shapes(tree) -> dict[str, tuple]:
    """'params/hidden/0/kernel' -> shape, for every array in `tree` (a state or its metadata)."""
    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path if name(k) != "value"): tuple(leaf.shape)
            for path, leaf in leaves}
