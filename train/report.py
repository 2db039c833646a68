"""What a run leaves behind to read: JSON-lines metrics and a PNG of the curves.

Figures are drawn on a `matplotlib.figure.Figure` of their own, never through pyplot, so
descent neither switches matplotlib's backend nor adds to a notebook's figures.
"""
import importlib
import io
import json
import logging
import os
import sys
import threading

import jax

from train import storage
from train.files import append_line, json_line, read_bytes, write_atomically  # noqa: F401
from train.workdir import check as workdir_check

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_metrics(workdir: str) -> list[dict]:
    """The records of `<workdir>/metrics.jsonl`, in order; [] when there is none. A line that
    is not JSON names the file and the line; a last line cut short by a full disk is dropped."""
    path = os.path.join(workdir, METRICS_FILE)
    if not (storage.exists(path) if storage.is_url(path) else os.path.lexists(path)):
        return []
    lines = read_bytes(path).split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if number == len(lines):  # no newline after it: a write cut short (a full disk)
                log.warning("dropped the unfinished last line of %s", path)
                continue
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            raise ValueError(f"{path} line {number} is not JSON ({why}); fix or remove that "
                             f"line") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path} line {number} is not a record of descent's (a JSON "
                             f"object with an integer step); fix or remove that line")
        records.append(record)
    return records


def record_evaluation(workdir: str, metrics: dict) -> dict:
    """Writes `metrics` to `<workdir>/eval_<split>_<step>.json` (`..._ema.json` for the moving
    average of the weights) on process 0 and returns them.

    A work directory that cannot be written loses no result: the metrics come back with
    `"not_saved"` saying why, and the reason is logged as a warning."""
    if jax.process_index() == 0:
        suffix = "_ema" if metrics.get("weights") == "ema" else ""
        path = os.path.join(workdir, f"eval_{metrics['split']}_{metrics['step']}{suffix}.json")
        try:
            write_atomically(path, json.dumps(metrics, indent=2))
        except OSError as e:
            metrics = {**metrics, "not_saved": f"could not write {path} ({e.strerror}); the "
                                               f"metrics above are all there is of them"}
            log.warning("%s", metrics["not_saved"])
    return metrics


def import_plotting_behind() -> None:
    """Imports what `plot_curves` needs in a thread of its own (half a second of a short
    run's end), to be done by the time the curves are drawn; nothing once it is imported."""
    if "matplotlib.figure" in sys.modules:
        return
    threading.Thread(target=importlib.import_module, args=("matplotlib.figure",),
                     name="descent-import", daemon=True).start()


def plot_curves(workdir: str, title: str = "", eval_label: str = "eval") -> str:
    """Draws train and eval loss and accuracy (mean absolute error for regression) against
    step into `<workdir>/curves.png`. The title (default: the work directory's name) and the
    labels are shown as written: a `$` in them is not read as a formula."""
    from matplotlib.figure import Figure

    records = read_metrics(workdir_check(workdir))
    second = "mae" if any("train_mae" in r for r in records) else "accuracy"
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", second)):
        for split, label, style in (("train", "train", "-"), ("eval", eval_label, "o-")):
            points = [(r["step"], r[f"{split}_{metric}"]) for r in records
                      if f"{split}_{metric}" in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label=label, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel({"mae": "mean absolute error"}.get(metric, metric))
        ax.grid(alpha=0.3)
        for text in ax.legend().get_texts():
            text.set_parse_math(False)
    axes[0].set_yscale("log")
    fig.suptitle(title or os.path.basename(storage.absolute(workdir)), parse_math=False)
    fig.tight_layout()
    path = os.path.join(workdir, CURVES_FILE)
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png")
    write_atomically(path, png.getvalue())
    return path
