"""Where a run's records go: the one seam between the loop and everything that shows or keeps them.

At every logging point the loop builds one record (a flat dict: `step`, then floats) and hands it
to `Writers.write`, which passes it to each writer of the run: JSON lines in the work directory,
TensorBoard event files, the console, and any writer a Python user adds. A writer is a callable
taking the record, or an object with `write(record)` and, if it holds resources, `close()`:

    import wandb
    wandb.init(project="descent")
    run.train_and_evaluate(config, "runs/a", writers=[lambda r: wandb.log(r, step=r["step"])])

Only process 0 writes. Adding a writer never edits the loop. Messages (a run starting,
resuming, stopping) are not records: they go through `logging` (see `train.messages`).
"""
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import jax
from tqdm import tqdm

from train import storage
from train.files import append_line
from train.report import METRICS_FILE
from train.workdir import refuse_foreign

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


class Writer(Protocol):
    def write(self, record: dict) -> None: ...


class Writers:
    """Fans each record out to `writers` (on process 0 only); `close` closes those that can."""

    def __init__(self, writers: Iterable[Writer | Callable[[dict], None]]):
        self.writers = list(writers) if jax.process_index() == 0 else []
        for w in self.writers:
            if not (callable(w) or callable(getattr(w, "write", None))):
                raise TypeError(f"a writer must be callable or have write(record); got "
                                f"{type(w).__name__}")

    def write(self, record: dict) -> None:
        for w in self.writers:
            w.write(record) if hasattr(w, "write") else w(record)

    def close(self) -> None:
        for w in self.writers:
            if callable(getattr(w, "close", None)):
                w.close()


class JsonLines:
    """Appends each record as one line of JSON to `<workdir>/metrics.jsonl`."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)

    def write(self, record: dict) -> None:
        append_line(self.path, record)


# Record keys that TensorBoard shows under a section of their own (the part before "/").
_SECTIONS = {"learning_rate": "optimizer", "grad_norm": "norms", "param_norm": "norms",
             "examples_per_s": "speed", "steps_per_s": "speed", "flops_per_s": "speed",
             "mfu": "speed", "compile_s": "speed", "flops_per_step": "speed",
             "peak_memory_bytes": "memory", "epoch": "progress"}


def tensorboard_place(key: str, eval_split: str) -> tuple[str, str] | None:
    """(run, tag) under which TensorBoard shows record field `key`, or None for fields that are
    not curves. Train and evaluation curves share a tag in separate runs, so TensorBoard draws
    `train` and `validation` loss in one chart, as Keras does."""
    if key in ("step", "time"):
        return None
    for prefix, run in (("eval_ema_", f"{eval_split}_ema"), ("eval_", eval_split),
                        ("train_", "train")):
        if key.startswith(prefix):
            return run, key[len(prefix):]
    if key in _SECTIONS:
        return "train", f"{_SECTIONS[key]}/{key}"
    return "train", key  # grad_norm/<path>, and any field a later version adds


# The names of the event files `TensorBoard` writes: prefix, time, host, process id, "descent".
OWN_EVENT_FILE = re.compile(r"events\.out\.tfevents\.\d+\..*\.\d+\.descent")


def own_event_files(root: str) -> list[str]:
    """The event files descent wrote under `root` (one level of run folders, no link followed):
    the only files a resumed run removes there, once it has written their records again."""
    if storage.is_url(root):
        return [os.path.join(root, run, name) for run in storage.listdir(root)
                for name in storage.listdir(os.path.join(root, run))
                if OWN_EVENT_FILE.fullmatch(name)]
    if not os.path.isdir(root) or os.path.islink(root):
        return []
    found = []
    for run in sorted(os.listdir(root)):
        folder = os.path.join(root, run)
        if os.path.islink(folder) or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if OWN_EVENT_FILE.fullmatch(name) and stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path)
    return found


class TensorBoard:
    """TensorBoard event files under `<workdir>/tensorboard/<run>/`, one event per record and run.

    Written with tensorboardX's event-file writer and protocol buffers, never TensorFlow, and
    synchronously: a write that fails (a full disk) fails here, where the loop turns it into a
    clear error, not in a thread of its own. On resume, `history` (the records the run resumes
    with) is written into fresh event files and only then are the older files removed, so
    steps a resumed run discarded and trains again never show twice."""

    FLUSH_EVERY_S = 10.0  # and at every evaluation: how far behind a live TensorBoard may be

    def __init__(self, workdir: str, eval_split: str, history: Iterable[dict] = ()):
        from tensorboardX.event_file_writer import EventsWriter  # only runs that write it
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        self._event, self._summary = Event, Summary
        self.root = os.path.join(workdir, TENSORBOARD_DIR)
        self.eval_split = eval_split
        earlier = own_event_files(self.root)
        suffix = f".{os.getpid()}.descent"  # never the name of an earlier file, however soon

        def open_run(run: str) -> EventsWriter:
            if os.sep in run or run in (os.curdir, os.pardir):  # a split's name, from a config
                raise ValueError(f"{run!r} cannot name a TensorBoard folder; name the split "
                                 f"without {os.sep!r}")
            folder = os.path.join(self.root, run)
            if storage.is_url(folder):  # an object each, uploaded whole at every flush
                return EventsWriter(os.path.join(folder, "events"), suffix)
            os.makedirs(folder, exist_ok=True)
            for path in (self.root, folder):  # made, or found, by us: never a link out
                refuse_foreign(path, os.lstat(path))
            return EventsWriter(os.path.join(folder, "events"), suffix)

        self._open, self._runs, self._flushed = open_run, {}, time.monotonic()
        for record in history:
            self.write(record)
        self.flush()
        mine = {w._file_name for w in self._runs.values()}  # noqa: SLF001
        for path in earlier:  # replaced by what was just written, so removed only now
            if path not in mine:
                storage.remove(path) if storage.is_url(path) else os.remove(path)

    def write(self, record: dict) -> None:
        values = {}
        for key, value in record.items():
            place = tensorboard_place(key, self.eval_split)
            if place is not None and isinstance(value, (int, float)) and not isinstance(
                    value, bool):
                values.setdefault(place[0], []).append(
                    self._summary.Value(tag=place[1], simple_value=float(value)))
        for run, run_values in values.items():
            if run not in self._runs:
                self._runs[run] = self._open(run)
            self._runs[run].write_event(self._event(
                wall_time=record.get("time", time.time()), step=record["step"],
                summary=self._summary(value=run_values)))
        if "eval_loss" in record or time.monotonic() - self._flushed > self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        for w in self._runs.values():
            w.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        try:
            for w in self._runs.values():
                w.close()
        except OSError as e:  # at the end, or while another error stops the run: say, go on
            log.warning("could not finish the TensorBoard files in %s (%s); %s holds every "
                        "record", self.root, e.strerror, METRICS_FILE)
        self._runs = {}


_SHORT = {"accuracy": "acc"}  # console abbreviations


class Console:
    """The progress bar (its postfix shows the latest train metrics), a line per evaluation, and
    the compile time once. `names` are the metrics shown: the loss and the task's metrics;
    `label` stands before the bar."""

    def __init__(self, total: int, done: int, names: tuple[str, ...], eval_split: str,
                 show: bool = True, label: str | None = None):
        self.names, self.eval_split, self.show = names, eval_split, show
        self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True,
                        disable=None if show else True, desc=label)

    def advance(self) -> None:
        self.bar.update()

    def write(self, record: dict) -> None:
        if "compile_s" in record:
            self._line(f"compiled the train step in {record['compile_s']:.2f} s")
        if "train_loss" not in record:
            return
        self.bar.set_postfix({_SHORT.get(k, k): f"{record['train_' + k]:.4f}"
                              for k in self.names}, refresh=False)
        if "eval_loss" in record:
            line = (f"step {record['step']:>6} epoch {record['epoch']:6.2f}  train "
                    + self._scores(record, "train_") + f"  {self.eval_split} "
                    + self._scores(record, "eval_"))
            if "eval_ema_loss" in record:
                line += "  EMA " + self._scores(record, "eval_ema_")
            self._line(line)

    def _scores(self, record: dict, prefix: str) -> str:
        return " ".join(f"{_SHORT.get(k, k)} {record[prefix + k]:.4f}" for k in self.names)

    def _line(self, text: str) -> None:
        if self.show:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()

