"""What every study shares: configs derived from the shipped ones, runs through the public API,
figures with seed spread, and the report (`report.md`, `results.json`, PNGs) they leave.

A study module defines `TITLE`, `CLAIM` (the article's words), `SEEDS` (its default number of
seeds) and `run(study) -> dict` with the keys `finding` (one sentence with its numbers),
`setup` (markdown), `tables` (a list of `Table`), optionally `meaning` (what the finding says
about the claim) and `literature` (a list of `Cited`: published results beside ours), and
`data` (every number, JSON-able: what the tests read).

Comparisons share two tools here: `tune` gives each arm its own learning rate from a bracketed
sweep, and `compare` says "beats" only where a paired test over the seeds does, else "tie".
"""
import contextlib
import dataclasses
import datetime
import io
import json
import logging
import os
import platform
import re
import shutil
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from experiments import run as run_api
from experiments.config import load_config
from train import report
from train.loop import Diverged

DEFAULT_OUT = os.path.join("runs", "studies")
ARTICLE = "How Neural Networks Learn Patterns from Training Data"
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
REPORT, RESULTS = "report.md", "results.json"


class StudyError(RuntimeError):
    """A run of a study failed for a reason other than the one the study measures."""


class Table(NamedTuple):
    title: str
    header: list[str]
    rows: list[list]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


class Cited(NamedTuple):
    """A published result beside the study's own: who, what they report, what we measured, and
    whether the two agree (in words: "agrees", "disagrees: ...", "not comparable: ...")."""
    source: str
    theirs: str
    ours: str
    verdict: str


@dataclasses.dataclass
class Run:
    """One training run of a study: its config, the records it logged, its test metrics."""
    label: str
    config: ml_collections.ConfigDict
    workdir: str
    history: list[dict]
    test: dict | None          # the best checkpoint on the test split; None if it diverged
    summary: dict | None       # what `run.train_and_evaluate` returned (state, trainer, ...)
    seconds: float             # wall time of the whole run, compilation and evaluation included
    #                            (for runs trained together, an equal share of the group's)
    diverged: str | None = None  # why it stopped, if the loss or parameters became NaN/inf
    diverged_at: int | None = None  # the step at which they did

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of `key` over the records that have it."""
        points = [(r["step"], r[key]) for r in self.history if key in r]
        steps, values = zip(*points) if points else ((), ())
        return np.array(steps), np.array(values, dtype=float)

    def last(self, key: str) -> float:
        return float(self.curve(key)[1][-1])

    def first(self, key: str) -> float:
        return float(self.curve(key)[1][0])

    def training_seconds(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, seconds of training up to each record), from the records' throughput: the
        first (compiling) step, evaluation and checkpoints are left out."""
        steps, seconds, total, previous = [], [], 0.0, None
        batch = self.config.dataset.batch_size
        for r in self.history:
            if "examples_per_s" in r and previous is not None:
                total += (r["step"] - previous) * batch / r["examples_per_s"]
            previous = r["step"]
            steps.append(r["step"])
            seconds.append(total)
        return np.array(steps), np.array(seconds)


class Study:
    """One study's run: where it writes, how many seeds, how big, and what it has made so far."""

    def __init__(self, name: str, module, out: str, *, quick: bool = False,
                 seeds: int | None = None, data_dir: str | None = None, progress=print):
        if seeds is not None and seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        self.name, self.module, self.quick = name, module, quick
        self.seeds = list(range(seeds if seeds is not None else module.SEEDS))
        self.data_dir = data_dir or ""
        self.dir = os.path.join(out, name)
        self.progress = progress
        self.figures: list[tuple[str, str]] = []  # (file name, caption)
        self.runs_done = 0
        self.planned = 0

    # --- running
    def run(self) -> dict:
        self._clear_own_files()
        start = time.perf_counter()
        mode = "quick" if self.quick else "default size"
        self.say(f"{self.module.TITLE}: {mode}, seeds {self.seeds}, into {self.dir}")
        with _quiet_third_party_logs():
            out = self.module.run(self)
        wall = time.perf_counter() - start
        results = {
            "study": self.name, "title": self.module.TITLE, "claim": self.module.CLAIM,
            "finding": out["finding"], "quick": self.quick, "seeds": self.seeds,
            "wall_s": round(wall, 1), "machine": machine(),
            "date": datetime.date.today().isoformat(),
            "figures": [f for f, _ in self.figures], "data": out["data"],
        }
        report.write_atomically(os.path.join(self.dir, RESULTS), json.dumps(results, indent=1))
        report.write_atomically(os.path.join(self.dir, REPORT), self._report(out, results))
        self.say(f"{self.name} done in {_duration(wall)}: {out['finding']}")
        return results

    def say(self, message: str) -> None:
        self.progress(f"[{self.name}] {message}")

    def plan(self, runs: int) -> None:
        """Announces how many training runs follow, for the progress lines."""
        self.planned, self.runs_done = runs, 0

    def plan_more(self, runs: int) -> None:
        """Adds `runs` to those announced (an adaptive sweep that extends itself)."""
        self.planned += runs

    def config(self, base: str = "digits_mlp.py", variant: str = "", **overrides
               ) -> ml_collections.ConfigDict:
        """A shipped config (`experiments/configs/<base>[:variant]`) with `overrides` set by
        dotted key ("model.depth": 10); fields the base lacks are added (e.g. "model.init").

        Studies train small nets on one device (no collectives to pay for), keep one latest and
        one best checkpoint per run, draw no `curves.png` per run (their own figures show the
        runs; drawing one costs about 0.2 s on 2 cores), and read prepared datasets from the
        study's data_dir.
        """
        path = os.path.join(CONFIGS, base) + (f":{variant}" if variant else "")
        config = load_config(path)
        config.parallel.mesh = "data=1"
        config.log.curves = False
        config.checkpoint.keep = 1
        config.checkpoint.keep_best = 1
        config.dataset.data_dir = self.data_dir
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
        return config

    def train(self, label: str, config: ml_collections.ConfigDict, *, test: bool = True,
              dataset=None) -> Run:
        """Trains one run through `run.train_and_evaluate` (or `loop.fit` when `test` is off)
        in `<dir>/runs/<label>`, on `dataset` where given (a `data` Dataset the study made,
        e.g. a subset) rather than the one the config names. A run that diverges is returned
        with `diverged` set, since divergence is something studies measure; any other failure
        raises StudyError naming the run."""
        workdir = os.path.join(self.dir, "runs", _slug(label))
        self.runs_done += 1
        count = f"{self.runs_done}/{self.planned}" if self.planned else f"{self.runs_done}"
        start = time.perf_counter()
        summary, result, diverged, diverged_at = None, None, None, None
        try:
            if test:
                summary = run_api.train_and_evaluate(config, workdir, console=False,
                                                     dataset=dataset)
                result = summary["test"]
            else:
                from train.loop import fit
                model, built = run_api.build(config)
                dataset = built if dataset is None else dataset
                summary = fit(config, workdir, model, dataset, console=False)
        except Diverged as e:
            diverged, diverged_at = str(e), e.step
        except Exception as e:  # noqa: BLE001 - named and re-raised as the study's failure
            raise StudyError(f"study {self.name}: run {label!r} failed: "
                             f"{type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        # the training records (the compile-time record at the start is not one)
        history = [r for r in report.read_metrics(workdir) if "train_loss" in r]
        done = Run(label, config, workdir, history, result, summary, seconds, diverged,
                   diverged_at)
        self.say(f"run {count} {label}: {_describe(done)} ({seconds:.1f} s)")
        return done

    def train_seeds(self, label: str, config_for_seed, *, test: bool = True) -> list[Run]:
        """One run of `config_for_seed(seed)` per seed of the study, labelled
        `<label>-seed<seed>`, trained together as one program (`train_group`)."""
        return self.train_group([f"{label}-seed{seed}" for seed in self.seeds],
                                [config_for_seed(seed) for seed in self.seeds], test=test)

    def train_group(self, labels: list[str], configs: list[ml_collections.ConfigDict], *,
                    test: bool = True) -> list[Run]:
        """`train` for runs that differ only in their seed and learning rate, trained together
        as one compiled program (`run.train_many`): one compilation instead of one per run,
        and every step trains all of them. The numbers agree with runs alone to rounding
        (tests/test_many.py); a run that diverges stops alone. Each Run's `seconds` is its
        share of the group's wall time."""
        if len(configs) == 1:
            return [self.train(labels[0], configs[0], test=test)]
        workdirs = [os.path.join(self.dir, "runs", _slug(label)) for label in labels]
        start = time.perf_counter()
        try:
            if test:
                summaries = run_api.train_many(configs, workdirs, console=False)
            else:
                from train.many import fit_many
                dataset = run_api.load_dataset(configs[0])
                models = [run_api.build(c, dataset)[0] for c in configs]
                summaries = fit_many(configs, workdirs, models, dataset, console=False)
        except Exception as e:  # noqa: BLE001 - named and re-raised as the study's failure
            raise StudyError(f"study {self.name}: runs {', '.join(labels)} failed: "
                             f"{type(e).__name__}: {e}") from e
        seconds = (time.perf_counter() - start) / len(configs)
        runs = []
        for label, config, workdir, summary in zip(labels, configs, workdirs, summaries):
            self.runs_done += 1
            count = f"{self.runs_done}/{self.planned}" if self.planned else f"{self.runs_done}"
            history = [r for r in report.read_metrics(workdir) if "train_loss" in r]
            done = Run(label, config, workdir, history, summary.get("test"), summary, seconds,
                       summary["diverged"], summary["diverged_at"])
            self.say(f"run {count} {label}: {_describe(done)} (trained with "
                     f"{len(configs) - 1} others as one program)")
            runs.append(done)
        return runs

    # --- what it leaves
    def figure(self, fig: Figure, file: str, caption: str) -> str:
        """Saves `fig` as `<dir>/<file>` and lists it, with its caption, in the report.

        The PNG is reduced to a 256-colour palette: a third of the size, the same to the eye
        (plots have few colours), so the reports stay small enough to keep in a repository.
        """
        path = os.path.join(self.dir, file)
        rendered = io.BytesIO()
        fig.savefig(rendered, format="png", dpi=110)
        image = Image.open(rendered).convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        png = io.BytesIO()
        image.save(png, format="png", optimize=True)
        report.write_atomically(path, png.getvalue())  # a fresh temporary name, never a link
        self.figures.append((file, caption))
        return path

    def _clear_own_files(self) -> None:
        """Removes what an earlier run of this study left in its directory (its runs, report,
        results and the figures it listed); anything else there is left alone."""
        os.makedirs(self.dir, exist_ok=True)
        previous = os.path.join(self.dir, RESULTS)
        own = [REPORT, RESULTS]
        if os.path.exists(previous):
            try:
                with open(previous) as f:
                    own += json.load(f).get("figures", [])
            except (OSError, ValueError):
                pass
        for file in own:
            path = os.path.join(self.dir, os.path.basename(file))
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
        shutil.rmtree(os.path.join(self.dir, "runs"), ignore_errors=True)

    def _report(self, out: dict, results: dict) -> str:
        seeds = len(self.seeds)
        command = f"descent study {self.name}" + (" --quick" if self.quick else "") + (
            f" --seeds {seeds}" if seeds != self.module.SEEDS else "")
        parts = [f"# {self.module.TITLE}", "",
                 f"> {self.module.CLAIM}", ">", f"> — *{ARTICLE}*", "",
                 f"**Finding.** {out['finding']}", "", "## Setup", "", out["setup"].strip(), ""]
        if out.get("tables"):
            parts += ["## Results", ""]
            for table in out["tables"]:
                parts += [table.markdown(), ""]
        for file, caption in self.figures:
            parts += [f"![{caption}]({file})", "", f"*{caption}*", ""]
        if out.get("meaning"):
            parts += ["## What this says about the claim", "", out["meaning"].strip(), ""]
        if out.get("literature"):
            parts += ["## Literature", "", Table(
                "Published results beside this study's", ["source", "what it reports", "here",
                                                          "agreement"],
                [list(c) for c in out["literature"]]).markdown(), ""]
        parts += ["---", "",
                  f"{'Quick run' if self.quick else 'Run'} of {results['date']}: "
                  f"{_duration(results['wall_s'])} on {results['machine']}; seeds "
                  f"{', '.join(map(str, self.seeds))}. Regenerate with `{command}`; every "
                  f"run's checkpoints and metrics were written to `runs/` beside this file.", ""]
        return "\n".join(parts)


def write_index(out: str, results: dict, wall_s: float) -> str:
    """`<out>/index.md`: every study's claim, finding and first figure, with the total time."""
    size = "quick" if any(r["quick"] for r in results.values()) else "default"
    lines = ["# What the article says, measured", "",
             f"*{ARTICLE}*, claim by claim, at {size} size: {_duration(wall_s)} of runs on "
             f"{machine()}. Regenerate with `descent study all`" + (" --quick" if size == "quick"
                                                                     else "") + ".", ""]
    for name, r in results.items():
        lines += [f"## {r['title']}", "", f"> {r['claim']}", "", r["finding"], ""]
        if r["figures"]:
            lines += [f"![{r['title']}]({name}/{r['figures'][0]})", ""]
        lines += [f"[Report]({name}/{REPORT}) · `descent study {name}` · "
                  f"{_duration(r['wall_s'])}", ""]
    path = os.path.join(out, "index.md")
    report.write_atomically(path, "\n".join(lines))
    return path


# --- fair comparisons
# The 1-3-10 ladder of learning rates that sweeps climb.
LADDER = tuple(float(f"{m}e{e}") for e in range(-6, 3) for m in (1, 3))  # 1e-6 ... 300


class Tuned(NamedTuple):
    """An arm at the learning rate its sweep picked: the rate, its runs (one per seed), the mean
    score at every rate tried, and whether the pick is still at an edge of the sweep (the
    ladder's end or `extensions` used up): a rate to read with care."""
    rate: float
    runs: list
    sweep: dict
    at_edge: bool


def tune(study, label: str, config_for, rates, *, score, extensions: int = 2,
         seeds=None) -> Tuned:
    """Trains `config_for(rate, seed)` for every rate of `rates` (consecutive rungs of `LADDER`)
    and every seed of `seeds` (the study's, by default), all as one program, and picks the rate
    whose mean `score` over the seeds is lowest (`score(run)`: inf for a diverged run). While
    the pick is at an edge of what was tried, the next rung beyond it is trained too, up to
    `extensions` times."""
    seeds = study.seeds if seeds is None else list(seeds)
    rungs = sorted(LADDER.index(float(r)) for r in rates)
    if rungs != list(range(rungs[0], rungs[-1] + 1)):
        raise ValueError(f"rates {rates} are not consecutive rungs of the 1-3-10 ladder")
    runs: dict[float, list] = {}

    def train(js):
        new = [(LADDER[j], seed) for j in js for seed in seeds]
        trained = study.train_group([f"{label}-lr{lr:g}-seed{seed}" for lr, seed in new],
                                    [config_for(lr, seed) for lr, seed in new])
        for (lr, _), r in zip(new, trained):
            runs.setdefault(lr, []).append(r)

    def mean_score(lr):
        values = [score(r) for r in runs[lr]]
        return float(np.mean(values)) if all(np.isfinite(values)) else np.inf

    train(rungs)
    for extension in range(extensions + 1):
        best = min(runs, key=mean_score)
        tried = sorted(runs)
        step = -1 if best == tried[0] else 1 if best == tried[-1] else 0
        beyond = LADDER.index(best) + step
        if step == 0 or not 0 <= beyond < len(LADDER) or extension == extensions:
            break
        if step == 1 and not np.isfinite(mean_score(best)):
            break
        study.plan_more(len(seeds))
        train([beyond])
    tried = sorted(runs)
    return Tuned(best, runs[best], {lr: mean_score(lr) for lr in tried},
                 len(tried) > 1 and best in (tried[0], tried[-1]))


def extending(extensions: int) -> str:
    """How `tune` extended a sweep, in the words of a report's setup."""
    if extensions == 0:
        return "the sweep not extended (quick mode), so a best rate at its edge is only flagged"
    return (f"the sweep extended one rung of the 1-3-10 ladder at a time (up to {extensions} "
            f"times) while the best is at its edge")


class Compared(NamedTuple):
    """`a` against `b` over paired seeds: the mean difference (of log10 values where `log`),
    the paired t-test's two-sided p, and the verdict: "a", "b" (which is better) or "tie"."""
    difference: float
    p: float
    verdict: str
    seeds: int

    def words(self, a: str, b: str) -> str:
        """'A beats B (paired t-test over 5 seeds, p = 0.002)', or 'A and B tie (...)'."""
        test = f"paired t-test over {self.seeds} seeds, p = {self.p:.2g}"
        if self.verdict == "tie":
            return f"{a} and {b} tie ({test})"
        winner, loser = (a, b) if self.verdict == "a" else (b, a)
        return f"{winner} beats {loser} ({test})"


def compare(a, b, *, lower_is_better: bool = True, log: bool = False,
            alpha: float = 0.05) -> Compared:
    """Seed i of `a` against seed i of `b` (the same seed: the same data order, the same
    draws where the arms share them) by a two-sided paired t-test; `log` compares log10
    values, for errors that differ by factors. A non-finite value (a diverged run) counts as
    the worst; where one arm has one and the other does not, the differences have no mean to
    test and an exact sign test decides instead (with 5 seeds no sign test reaches p < 0.05:
    a tie). Fewer than 3 seeds never decide: the verdict is "tie"."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"compare needs one value per seed in each arm, got {a.shape} and "
                         f"{b.shape}")
    worst = np.inf if lower_is_better else -np.inf
    a, b = np.where(np.isfinite(a), a, worst), np.where(np.isfinite(b), b, worst)
    if log:
        with np.errstate(divide="ignore"):
            a, b = np.log10(a), np.log10(b)
    d = a - b
    if len(d) < 3:
        p, mean = 1.0, float(np.mean(d)) if np.all(np.isfinite(d)) else float("nan")
    elif not np.all(np.isfinite(d)):  # an arm diverged where the other did not
        from scipy import stats
        signs = np.sign(d[~np.isnan(d)])  # both diverged: no information either way
        lower, higher = int((signs < 0).sum()), int((signs > 0).sum())
        p = float(stats.binomtest(lower, lower + higher).pvalue) if lower + higher else 1.0
        mean = -np.inf if lower > higher else np.inf if higher > lower else float("nan")
    elif np.all(d == d[0]):  # no spread: the t statistic is undefined
        p, mean = (1.0 if d[0] == 0 else 0.0), float(d[0])
    else:
        from scipy import stats
        p, mean = float(stats.ttest_rel(a, b).pvalue), float(d.mean())
    if p >= alpha:
        verdict = "tie"
    else:
        verdict = "a" if (mean < 0) == lower_is_better else "b"
    return Compared(mean, p, verdict, len(d))


# --- figures
def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 3.8):
    """A figure of `nrows` x `ncols` panels, each about `width` x `height` inches; no pyplot,
    so no backend is chosen and nothing global changes."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, axes


def band(ax, x, ys, label: str, color=None, linestyle="-", marker=None):
    """The mean of `ys` (one row per seed, NaN where a run has no value) as a line over `x`,
    with the min-max over seeds shaded."""
    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    with np.errstate(all="ignore"), _ignore_all_nan():
        mean, low, high = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
    line, = ax.plot(x, mean, linestyle, color=color, marker=marker, markersize=4, label=label)
    if len(ys) > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def spread(values) -> str:
    """'0.912 (0.901-0.925)': mean and min-max over seeds."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.3g}"
    return f"{v.mean():.3g} ({v.min():.3g}-{v.max():.3g})"


def on_grid(runs: list[Run], key: str, steps: np.ndarray) -> np.ndarray:
    """`key` of every run at `steps` (one row per run), NaN after a run stopped."""
    rows = []
    for r in runs:
        s, v = r.curve(key)
        row = np.full(len(steps), np.nan)
        if len(s):
            row = np.interp(steps, s, v, right=np.nan)
            row[steps < s[0]] = np.nan
        rows.append(row)
    return np.array(rows)


# --- helpers
def machine() -> str:
    """'Intel Xeon ..., 2 cores; JAX 0.10.2 on 1 cpu device': what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    kind = device.device_kind if device.platform != "cpu" else "cpu"
    return f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__}, {kind}"


def _describe(r: Run) -> str:
    if r.diverged:
        return "diverged"
    if r.test:
        shown = {k: v for k, v in r.test.items() if k in ("accuracy", "loss", "mae")}
        return "test " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
    evals = [x for x in r.history if "eval_loss" in x]
    return f"final eval loss {evals[-1]['eval_loss']:.4g}" if evals else "done"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{seconds:.1f} s"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_")


@contextlib.contextmanager
def _ignore_all_nan():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


@contextlib.contextmanager
def _quiet_third_party_logs():
    """Orbax reports routine decisions (read-only restores) as absl warnings: keep them off a
    study's progress lines, and put the verbosity back afterwards."""
    from absl import logging as absl_logging
    before = absl_logging.get_verbosity()
    if not logging.getLogger(__name__).isEnabledFor(logging.DEBUG):  # --verbose shows them
        absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)
