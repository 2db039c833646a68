"""What a run shows and leaves behind: JSON-lines metrics, a progress bar, a PNG of the curves."""
import contextlib
import io
import json
import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def append_metrics(workdir: str, record: dict) -> None:
    """Appends one JSON object per line to `<workdir>/metrics.jsonl`, never through a link."""
    append_line(os.path.join(workdir, METRICS_FILE), record)


def append_line(path: str, record: dict) -> None:
    """Appends `record` as one line of JSON to `path`, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise OSError(e.errno, f"{path} is a symbolic link, which descent does not write "
                                   f"through") from None
        raise
    with os.fdopen(fd, "a") as f:
        f.write(json_line(record))


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` to a new temporary file beside `path`, then renames it over `path`: a
    reader never sees half a file, and a symbolic link at `path` is replaced, not followed."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def json_line(record: dict) -> str:
    return json.dumps(record) + "\n"


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it: a write cut short (a full disk)
                print(f"warning: dropped the unfinished last line of {path}", file=sys.stderr)
                continue
            raise ValueError(f"{path} line {number} is not JSON ({e.msg}); fix or remove that "
                             f"line") from None
    return records


def plot_curves(workdir: str, title: str = "", eval_label: str = "eval") -> str:
    """Draws train and eval loss and accuracy (mean absolute error for regression) against
    step into `<workdir>/curves.png`."""
    records = read_metrics(workdir)
    second = "mae" if any("train_mae" in r for r in records) else "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
        ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle(title or os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    path = os.path.join(workdir, CURVES_FILE)
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png")
    plt.close(fig)
    write_atomically(path, png.getvalue())
    return path
