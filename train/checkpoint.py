"""Orbax checkpoints: the train state, the config and data position beside it, the metrics
that rank it.

Each checkpoint is a directory `<workdir>/checkpoints/<step>/` with the items `state`
(orbax's PyTree format), `config`, `data` (the data position) and `dataset` (its
description), JSON.
Orbax writes into a temporary directory and renames it when complete, so a failed or
interrupted save never replaces a good checkpoint. Nothing is pickled. A checkpoint that
cannot be read is moved to `<workdir>/checkpoints-damaged/`, never deleted.

Before orbax renames a save into place, descent adds two files to it: `FORMAT`, the version
of the checkpoint's layout, and `CHECKSUMS`, a CRC-32 of every file. They are part of the
commit: a checkpoint on disk either has them or was never whole, and a checksum is only ever
written by the process that wrote the data (see `verify_checksums` for what a checkpoint
without them proves).

A training run writes through `Checkpoints`, which owns orbax's manager; reading (evaluation,
restore) needs only a read-only `open_manager`.
"""
import asyncio
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
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from train import storage
from train.files import read_bytes, write_atomically
from train.state import TrainState, abstract, named

log = logging.getLogger(__name__)

DAMAGED_DIR = "checkpoints-damaged"
CHECKSUMS = "descent-checksums.json"  # in each checkpoint's directory, beside orbax's items
FORMAT = "descent-format.json"        # {"format": FORMAT_VERSION}, beside it
# The layouts descent has written. 1: the items state, config and data alone (descent before
# 2026-11-25, which recorded no version). Then CHECKSUMS, written after the commit, no FORMAT
# (the item dataset from 2026-12-03). 2: FORMAT and CHECKSUMS written into the save before
# orbax commits it.
FORMAT_VERSION = 2
PREDATES_CHECKSUMS = 1
# What orbax itself writes as it commits, after the checksums: its commit timestamp and note
ORBAX_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
STEP_NAME = re.compile(r"0|[1-9][0-9]*")  # orbax's name for a step; "٣٩" or "039" is not one
IN_PROGRESS = re.compile(r"[0-9]+\.orbax-checkpoint-tmp.*")  # a save under way, or interrupted
# Orbax copies an array replicated over N devices out of all N at once, a 1/N slice from each
# ("replica-parallel"), one dispatched slice per device and array. For a net's many small
# arrays (biases, norm scales) that costs more than it spreads: ResNet-50 replicated over 8
# devices blocked training 368 ms per save this way, 78 ms copied from one device each
# (docs/performance.md). Arrays whose slice per device would be smaller are copied whole.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


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
    """A checkpoint's files are not what was saved: handled like any unreadable checkpoint.
    `step` names it where the error does not come from reading it by its step."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class IncompatibleCheckpoint(ValueError):
    """The checkpoint holds another model or optimizer than the one asked for, or was written by
    a newer descent: not damaged, so it is refused, never set aside."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (unwritable work directory, full disk)."""


def metric_mode(monitor: str) -> str:
    """'min' for losses and errors, 'max' for everything else (accuracy)."""
    return "min" if monitor.endswith(("loss", "mae", "mse")) else "max"


def open_manager(workdir: str, *, keep: int = 3, keep_best: int = 1,
                 monitor: str | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest `keep` checkpoints and the best `keep_best` by `monitor`
    (None: the metric the checkpoints were ranked by when saved, `eval_accuracy` where none
    was). Orbax reads every checkpoint's metrics as it starts: an unreadable one raises
    DamagedCheckpoint naming its step, which the caller sets aside before trying again."""
    if not read_only:
        check_retention(keep, keep_best)
    directory = os.path.join(storage.absolute(workdir), "checkpoints")
    saved = _check_metrics(directory)
    monitor = monitor or saved or "eval_accuracy"
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
        read_only=read_only, create=not read_only, save_interval_steps=0 if read_only else 1,
        temporary_path_class=None if read_only else (
            _SealedInBucket if storage.is_url(directory) else _SealedOnCommit))
    with _without_read_only_notice():
        return ocp.CheckpointManager(
            directory, options=options,
            item_handlers={"state": state_handler(),
                           "config": ocp.JsonCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           "dataset": ocp.JsonCheckpointHandler()})


def state_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's handler for a train state (as its StandardCheckpointHandler, the same files),
    with small replicated arrays copied from one device (MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)."""
    array = ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL,
        array_metadata_store=array_metadata_store.Store())
    others = [(t, ocp.type_handlers.get_type_handler(t))
              for t in (int, float, bytes, np.number, np.ndarray, str)]
    return ocp.PyTreeCheckpointHandler(
        type_handler_registry=ocp.type_handlers.create_type_handler_registry(
            *others, (jax.Array, array)))


def _check_metrics(directory: str) -> str | None:
    """Raises DamagedCheckpoint for the first checkpoint whose metrics are not a JSON object;
    returns the metric the newest checkpoint with metrics was ranked by (each holds that one)."""
    monitor = None
    for step in sorted(_listed_steps(directory)):
        try:
            metrics = json.loads(read_bytes(os.path.join(directory, str(step), "metrics",
                                                         "metrics")))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise DamagedCheckpoint(f"its metrics/metrics cannot be read ({e})", step) from None
        if not isinstance(metrics, dict):
            raise DamagedCheckpoint("its metrics/metrics is not a record of metrics", step)
        if len(metrics) == 1:
            (monitor,) = metrics
    return monitor


class _SealedOnCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """Orbax's temporary directory of a save, renamed into place when complete; a step's
    directory gets descent's format record and checksums first, in orbax's commit thread (once,
    on process 0, after every process has written its part)."""

    async def finalize(self) -> None:
        if STEP_NAME.fullmatch(self.get_final().name):  # the step, not one of its items
            await asyncio.to_thread(seal, str(self.get()))
        await super().finalize()


class _SealedInBucket(ocp.path.atomicity.CommitFileTemporaryPath):
    """In a bucket, which cannot rename a folder at once, orbax writes a save into its step's
    folder and commits it by writing `commit_success.txt` last; the format record and checksums
    are written just before."""

    async def finalize(self) -> None:
        if STEP_NAME.fullmatch(self.get_final().name):
            await asyncio.to_thread(seal, str(self.get()))
        await super().finalize()


def seal(directory: str) -> None:
    """Writes `FORMAT` and `CHECKSUMS` (a CRC-32 of every file but orbax's commit files) into a
    save that is written and not yet committed."""
    write_atomically(os.path.join(directory, FORMAT), json.dumps({"format": FORMAT_VERSION}))
    write_atomically(os.path.join(directory, CHECKSUMS),
                     json.dumps(_checksums(directory), indent=0))


class Checkpoints:
    """A run's checkpoints in `<workdir>/checkpoints`: orbax's manager, keeping the latest
    `keep` and the best `keep_best` by `monitor`; each save is checksummed as it is committed,
    in orbax's own thread, behind training. `close` (or leaving a `with` block) finishes what
    was started."""

    def __init__(self, workdir: str, *, keep: int = 3, keep_best: int = 1,
                 monitor: str = "eval_accuracy"):
        while True:  # each pass sets aside a checkpoint whose metrics orbax cannot read
            try:
                self.manager = open_manager(workdir, keep=keep, keep_best=keep_best,
                                            monitor=monitor)
                break
            except DamagedCheckpoint as e:
                set_aside(os.path.join(storage.absolute(workdir), "checkpoints"), e.step, e)
        self.directory = str(self.manager.directory)
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
        is finished first (orbax would wait for it too)."""
        self.wait()  # an earlier save that failed is named as the one that failed
        try:
            items = dict(state=ocp.args.PyTreeSave(state), config=ocp.args.JsonSave(config),
                         data=ocp.args.JsonSave(data_position))
            if dataset is not None:  # what rebuilds the dataset: name, options, classes, stats
                items["dataset"] = ocp.args.JsonSave(dataset)
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
            self._saving = step
        except Exception as e:  # noqa: BLE001
            raise _write_error(self.manager, step, e) from e

    def wait(self) -> None:
        """Blocks until every started save is committed on disk, checksums included."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise _write_error(self.manager, self._saving, e) from e

    def close(self) -> None:
        """Lets the save under way complete. Raises nothing: it runs on the way out of an error
        too, and `wait` has named any failure of a run that ended well."""
        try:
            self.wait()
            self.manager.close()
        except Exception as e:  # noqa: BLE001
            log.debug("closing the checkpoints in %s: %s", self.directory, e)

    def restore_latest_good(self, like: TrainState) -> tuple[TrainState, int, dict] | None:
        """`restore_latest_good` of these checkpoints."""
        return restore_latest_good(self.manager, like)

    def restore(self, step: int, like: TrainState) -> TrainState:
        return restore(self.manager, step, like)

    def saved_config(self, step: int) -> dict:
        return saved_config(self.manager, step)

    def saved_dataset(self, step: int) -> dict | None:
        return saved_dataset(self.manager, step)


def check_retention(keep: int, keep_best: int) -> None:
    """Refuses `checkpoint.keep` < 1 (every checkpoint would be deleted) or `keep_best` < 0."""
    if keep < 1 or keep_best < 0:
        raise ValueError(f"checkpoint.keep={keep} and keep_best={keep_best}: keep at least 1 "
                         f"latest checkpoint, and keep_best at least 0")


def verify_checksums(manager: ocp.CheckpointManager, step: int) -> None:
    """Raises DamagedCheckpoint unless every file of checkpoint `step` matches the checksum
    recorded when it was saved.

    A checkpoint without a readable `CHECKSUMS` is damaged, unless its `FORMAT` record says it
    predates checksums (version 1). No descent that wrote checkpoints without checksums recorded
    a version, so nothing but that record can prove it: a checkpoint with neither file is
    damaged, set aside and never deleted (`restore(..., verify=False)` reads one a person
    vouches for; so does writing {"format": 1} into its `FORMAT`). A record of a version newer
    than this descent knows raises IncompatibleCheckpoint.
    """
    directory = os.path.join(str(manager.directory), str(step))
    try:
        recorded = json.loads(read_bytes(os.path.join(directory, CHECKSUMS)))
    except FileNotFoundError:
        if _format_version(directory) == PREDATES_CHECKSUMS:
            return
        raise DamagedCheckpoint(f"its checksum file {CHECKSUMS} is missing") from None
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"its checksum file {CHECKSUMS} cannot be read ({e})") from None
    if (not isinstance(recorded, dict) or not recorded
            or not all(isinstance(v, str) for v in recorded.values())):
        raise DamagedCheckpoint(f"its checksum file {CHECKSUMS} is not a record of its files")
    found = _checksums(directory, only=recorded)
    for name, crc in recorded.items():
        if found.get(name) != crc:
            what = "is missing" if name not in found else "does not match its checksum"
            raise DamagedCheckpoint(f"{name} {what}")
    if _format_version(directory) is None:  # checksummed after the commit: no record of it
        return
    unrecorded = sorted(set(_files(directory)) - set(recorded))
    if unrecorded:  # a save records all it wrote: the record was replaced or cut short
        raise DamagedCheckpoint(f"{unrecorded[0]} is not in its checksum file {CHECKSUMS}")


def _format_version(directory: str) -> int | None:
    """The version `FORMAT` records (None without one); damage or a newer descent's raises."""
    try:
        record = json.loads(read_bytes(os.path.join(directory, FORMAT)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"its format record {FORMAT} cannot be read ({e})") from None
    version = record.get("format") if isinstance(record, dict) else None
    if type(version) is not int or version < PREDATES_CHECKSUMS:
        raise DamagedCheckpoint(f"its format record {FORMAT} holds no format version")
    if version > FORMAT_VERSION:
        raise IncompatibleCheckpoint(
            f"the checkpoint in {directory} has format version {version}, written by a newer "
            f"descent than this one (which reads up to {FORMAT_VERSION}); upgrade descent")
    return version


def _files(directory: str) -> list[str]:
    """The checkpoint's files a save records, relative to it: all but `CHECKSUMS` and the
    files orbax writes as it commits, after the record."""
    names = (storage.files_under(directory) if storage.is_url(directory) else
             (os.path.relpath(os.path.join(root, n), directory)
              for root, _, files in os.walk(directory) for n in files))
    return [n for n in names if n != CHECKSUMS and n not in ORBAX_COMMIT_FILES]


def _checksums(directory: str, only: dict | None = None) -> dict[str, str]:
    """{file: CRC-32} of the checkpoint's `_files`, or of those in `only` that exist."""
    names = list(only) if only is not None else _files(directory)
    sums = {}
    for name in names:
        crc = 0
        if storage.is_url(directory):
            with contextlib.suppress(FileNotFoundError):
                sums[name] = f"{zlib.crc32(storage.read_bytes(os.path.join(directory, name))):08x}"
            continue
        try:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        sums[name] = f"{crc:08x}"
    return sums


def _write_error(manager, step, error) -> CheckpointWriteError:
    kept = sorted(s for s in _listed_steps(manager.directory) if step is None or s < step)
    when = f" while saving step {step}" if step is not None else ""
    return CheckpointWriteError(
        f"could not write a checkpoint to {manager.directory}{when} ({reason(error)}); the "
        f"checkpoints already there are intact (steps {', '.join(map(str, kept)) or 'none'}). "
        f"Free space or make the work directory writable, then rerun to resume")


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint (whole or not: reading one tells)."""
    return bool(_listed_steps(os.path.join(workdir, "checkpoints")))


def _listed_steps(directory) -> list[int]:
    """The steps of the checkpoints in `directory`, whether orbax lists them or not (one whose
    metadata is gone): real directories named by their step in ASCII digits."""
    directory = str(directory)
    if storage.is_url(directory):  # a bucket holds no links
        return [int(n) for n in storage.listdir(directory) if STEP_NAME.fullmatch(n)
                and storage.isdir(os.path.join(directory, n))]
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [int(n) for n in names if STEP_NAME.fullmatch(n)
            and os.path.isdir(os.path.join(directory, n))
            and not os.path.islink(os.path.join(directory, n))]


def warn_of_strays(directory) -> None:
    """Says which entries of a checkpoints directory are not checkpoints descent wrote (a
    file named as a step, "039", "٣٩"): they are ignored, never read, moved or deleted."""
    directory = str(directory)
    try:
        names = storage.listdir(directory) if storage.is_url(directory) else sorted(
            os.listdir(directory))
    except OSError:
        return
    ours = set(map(str, _listed_steps(directory)))
    for name in names:
        if name not in ours and not IN_PROGRESS.fullmatch(name):
            log.warning("%s is not a checkpoint descent wrote (a checkpoint is a directory "
                        "named by its step in ASCII digits); ignored",
                        ascii(os.path.join(directory, name))[1:-1])


def reason(error: BaseException) -> str:
    """The operating system's words for what failed (e.g. "No space left on device"), or what
    a checksum found."""
    if isinstance(error, (DamagedCheckpoint, IncompatibleCheckpoint)):
        return str(error)
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
    """'latest', 'best' or a step number (ASCII digits) -> a step that exists in `manager`."""
    steps = sorted(set(manager.all_steps()) & set(_listed_steps(manager.directory)))
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}; run `descent train` first")
    if which == "latest":
        return steps[-1]
    if which == "best":  # no evaluation ranked any checkpoint yet: the latest is the best known
        best = manager.best_step()
        return best if best in steps else steps[-1]
    if isinstance(which, int) and not isinstance(which, bool):
        step = which
    elif isinstance(which, str) and re.fullmatch(r"-?[0-9]{1,30}", which):
        step = int(which)
    else:
        shown = ascii(which) if isinstance(which, str) else repr(which)
        raise ValueError(f"--checkpoint {shown} is not 'best', 'latest' or a step "
                         f"(saved steps: {', '.join(map(str, steps))})")
    if step not in steps:
        raise ValueError(f"no checkpoint at step {step} in {manager.directory}; "
                         f"saved steps: {', '.join(map(str, steps))}")
    return step


def restore(manager: ocp.CheckpointManager, step: int, like: TrainState, *,
            verify: bool = True) -> TrainState:
    """Restores the state at `step` into the structure, shapes and shardings of `like`.

    A checkpoint of another model or optimizer raises IncompatibleCheckpoint naming the
    differing arrays. `like`'s shardings may differ from the saved ones: another device count,
    mesh or strategy. With `verify`, every file is checked against the checksums recorded when
    it was saved, in a thread beside the restore (a mismatch raises DamagedCheckpoint).
    """
    if not verify:
        return _restore_state(manager, step, like)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        checked = pool.submit(verify_checksums, manager, step)
        try:
            state = _restore_state(manager, step, like)
        except Exception:  # a damaged checkpoint is named as damaged, whatever else failed
            checked.result()
            raise
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
            f"the checkpoint at step {step} in {manager.directory} does not fit this model and "
            f"optimizer ({len(differences)} arrays differ): {shown}. Use the config it was saved "
            f"with, or another --workdir, with --config.init_from="
            f"{os.path.dirname(str(manager.directory))} to start from its weights")
    target = abstract(like)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
    return restored.state


def read_arrays(manager: ocp.CheckpointManager, step: int, parts=("params", "model_state")
                ) -> dict[str, np.ndarray]:
    """'params/head/kernel' -> a host array, for every array of the state's `parts` at `step`
    (checksums verified first): the weights alone, on no device, whatever mesh saved them."""
    verify_checksums(manager, step)
    saved = manager.item_metadata(step)["state"]
    target = {part: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved[part])
              for part in parts if part in saved}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True))).state
    return {name: np.asarray(leaf) for name, leaf in named(restored).items()}


def saved_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config saved with the checkpoint at `step`."""
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def saved_dataset(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The description of the dataset saved with the checkpoint at `step`; None for a
    checkpoint saved before descent stored one (its config names the dataset)."""
    directory = os.path.join(str(manager.directory), str(step), "dataset")
    if not storage.is_folder(directory):
        return None
    return manager.restore(step, args=ocp.args.Composite(dataset=ocp.args.JsonRestore())).dataset


def saved_data_position(manager: ocp.CheckpointManager, step: int) -> dict:
    """Where the data iterator stood after `step`: {"epoch": e, "batch": b} of the next batch."""
    return manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data


def remove_incomplete(workdir: str) -> None:
    """Removes what an interrupted save left (orbax's temporary directories; in a bucket, a
    step's folder without the file orbax commits it with), saying so."""
    directory = os.path.join(storage.absolute(workdir), "checkpoints")
    if storage.is_url(directory):
        for name in storage.listdir(directory):
            step = os.path.join(directory, name)
            if (STEP_NAME.fullmatch(name)
                    and not storage.exists(os.path.join(step, ORBAX_COMMIT_FILES[1]))):
                log.info("removing an incomplete checkpoint left by an interrupted save: %s",
                         name)
                storage.rmtree(step)
        return
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        if IN_PROGRESS.fullmatch(name):
            log.info("removing an incomplete checkpoint left by an interrupted save: %s", name)
            shutil.rmtree(os.path.join(directory, name))


def restore_latest_good(manager: ocp.CheckpointManager, like: TrainState
                        ) -> tuple[TrainState, int, dict] | None:
    """(state, step, data position) of the newest checkpoint that reads back whole, or None.

    A checkpoint that fails to read or to verify (a truncated file, deleted metadata, a
    missing checksum file) is moved aside to `<workdir>/checkpoints-damaged/` with a warning,
    and the one before it is tried.
    """
    warn_of_strays(manager.directory)
    for step in sorted(_listed_steps(manager.directory), reverse=True):
        try:
            state = restore(manager, step, like)
            return state, step, saved_data_position(manager, step)
        except IncompatibleCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this one is damaged
            set_aside(manager, step, e)
    return None


def set_aside(manager: ocp.CheckpointManager | str, step: int, error: BaseException, *,
              fall_back: bool = True) -> str:
    """Moves the damaged checkpoint at `step` of `manager` (or of a checkpoints directory) to
    `<workdir>/checkpoints-damaged/`, never deleting it, and returns where; with `fall_back`,
    says so (the caller goes on with the one before it). Commands reading the work directory
    at once may all find it damaged: the first moves it, the others find it moved (then they
    name where it went) and go on alike."""
    aside = _move_aside(manager, step)
    if fall_back:
        log.warning("the checkpoint at step %s cannot be read (%s); moved to %s; falling back "
                    "to the previous one", step, reason(error), aside)
    return aside


def _move_aside(manager: ocp.CheckpointManager | str, step: int) -> str:
    """Renames the step's directory into `DAMAGED_DIR` (one atomic rename; no link followed
    on either side); returns where it is."""
    directory = manager if isinstance(manager, str) else str(manager.directory)
    workdir = os.path.dirname(directory)
    damaged = os.path.join(workdir, DAMAGED_DIR)
    name = f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0 and storage.is_url(directory):  # a copy, then a deletion
        storage.rename(os.path.join(directory, str(step)), os.path.join(damaged, name))
    elif jax.process_index() == 0:
        name = _rename_into(directory, str(step), damaged, name)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"descent: moved checkpoint {step} aside")
    if not isinstance(manager, str):
        manager.reload()
    return os.path.join(damaged, name)


def _rename_into(source_dir: str, source: str, target_dir: str, name: str) -> str:
    """Renames `source_dir/source` to `target_dir/name` (or `name.2`, ... if taken), made
    relative to directories opened without following links; if another command renamed it
    first, the name it was given there."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(target_dir)
    nofollow = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    src_fd, dst_fd = os.open(source_dir, nofollow), None
    try:
        try:
            dst_fd = os.open(target_dir, nofollow)
        except OSError as e:
            raise OSError(e.errno, f"{target_dir} is not a directory of descent's (a link?): "
                                   f"{e.strerror}; make it a real directory") from None
        for attempt in range(1, 100):
            candidate = name if attempt == 1 else f"{name}.{attempt}"
            try:
                os.rename(source, candidate, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                return candidate
            except FileNotFoundError:  # moved by another command at the same moment
                return _moved_by_another(target_dir, source) or name
            except OSError as e:  # a name taken (ENOTEMPTY, EEXIST): the next one
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise FileExistsError(f"{target_dir} holds 99 copies of checkpoint {source}")
    finally:
        os.close(src_fd)
        if dst_fd is not None:
            os.close(dst_fd)


def _moved_by_another(target_dir: str, step: str) -> str | None:
    """The newest entry of `target_dir` that is checkpoint `step` set aside."""
    with contextlib.suppress(OSError):
        names = [n for n in os.listdir(target_dir) if n.split("-")[0] == step]
        return max(names, key=lambda n: os.lstat(os.path.join(target_dir, n)).st_mtime_ns,
                   default=None)
    return None


def _shapes(tree) -> dict[str, tuple]:
    """'params/hidden/0/kernel' -> shape, for every array in `tree` (a state or its metadata)."""
    return {name: tuple(leaf.shape) for name, leaf in named(tree).items()}
