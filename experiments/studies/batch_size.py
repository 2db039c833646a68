"""The batch size: what a bigger mini-batch buys (fewer, cleaner steps) and what it costs (more
examples, so more computation, per unit of progress), on MNIST.

An MLP is trained with Adam at batch sizes 32 to 2,048, each batch size at its own learning rate
(`tune`: the rate that reaches the target validation accuracy in the fewest steps), and the
steps and examples to the target are read off each run. The gradient noise scale of McCandlish
et al. 2018, B_simple = tr(Σ) / |G|², is measured at fixed parameters (initialisation, and the
end of the smallest batch's run): |G|² from the full-training-set gradient, tr(Σ) from the
mini-batch gradients' squared distance from it (E|g_B - G|² = tr(Σ)/B, less a finite-set
correction), both from `Trainer.gradients`. Their model predicts that the steps to a target
stop falling near B = B_noise, of which B_simple is the simple estimate.

Larger, on an accelerator: the MNIST CNN, batches up to 32k, and the noise scale tracked along
training rather than at two points.
"""
import os

import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib.ticker import FuncFormatter

from experiments import run as run_api
from experiments.studies.common import (LADDER, Cited, Table, compare, extending, new_figure,
                                        spread, tune)
from data.batching import seeded_split
from data.tfds_source import data_source, read_all
from train.trainer import Trainer

TITLE = "The batch size"
CLAIM = ("Mini-batches of 32-512 balance computational efficiency with gradient-estimate "
         "quality.")
SEEDS = 5

BATCH_SIZES = (32, 64, 128, 256, 512, 1024, 2048)
WIDTH = 128
MAX_EXTENSIONS = 2
PLAIN = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:.2g}")  # not 3x10^0
COLORS = dict(zip(BATCH_SIZES, ("tab:purple", "tab:blue", "tab:cyan", "tab:green",
                                "tab:olive", "tab:orange", "tab:red")))


def settings(quick: bool) -> dict:
    if quick:  # the test's claims: 1/B variance, fewer steps but more examples at a large batch
        return dict(sizes=(32, 256, 2048), read=12_000, target=0.92, examples=15_000,
                    min_steps=40, rungs=1, extensions=0, noise_batches=8, trained_noise=False)
    return dict(sizes=BATCH_SIZES, read=None, target=0.95, examples=50_000, min_steps=100,
                rungs=3, extensions=MAX_EXTENSIONS, noise_batches=32, trained_noise=True)


def budget(s, b) -> int:
    """Steps for batch size b: a fixed number of examples (the small batches' cost), or at
    least `min_steps` (a large batch needs some steps whatever its size)."""
    return max(s["min_steps"], -(-s["examples"] // b))


def first_rate(b) -> float:
    """The ladder's rung nearest Adam's square-root rule from 1e-3 at batch 32 (Malladi et al.
    2022): where each batch size's sweep is centred."""
    guess = 1e-3 * (b / 32) ** 0.5
    return min(LADDER, key=lambda lr: abs(np.log(lr / guess)))


def run(study) -> dict:
    s = settings(study.quick)
    path, n = _mnist_arrays(study, s["read"])
    study.plan(len(s["sizes"]) * s["rungs"] * len(study.seeds))
    sweeps, tuned = {}, {}
    for b in s["sizes"]:
        steps = budget(s, b)
        reached = {}  # (rate, seed) -> steps to the target, for the sweep table and figure

        def score(r, steps=steps, reached=reached):
            hit = steps_to_target(r, s["target"])
            reached[r.config.optimizer.learning_rate, r.config.seed] = hit
            if r.diverged:
                return np.inf
            # a rate that misses the target ranks behind every one that reaches it
            return hit if hit is not None else steps * (2 + s["target"] - r.last(
                "eval_accuracy"))

        centre = LADDER.index(first_rate(b))
        rates = LADDER[centre - (s["rungs"] - 1) // 2: centre + s["rungs"] // 2 + 1]
        tuned[b] = tune(study, f"batch{b}",
                        lambda lr, seed, b=b, steps=steps: _config(study, path, b, lr, seed,
                                                                   steps),
                        rates, score=score, extensions=s["extensions"])
        sweeps[b] = reached
    data = {"batch_sizes": list(s["sizes"]), "target": s["target"], "train_examples": n,
            "width": WIDTH, "budget_steps": [budget(s, b) for b in s["sizes"]],
            "tuned": [_summary(b, tuned[b], sweeps[b]) for b in s["sizes"]]}
    data.update(_noise(study, s, path, tuned))
    data.update(_critical(data))
    _plot_steps(study, data)
    _plot_variance(study, data)
    _plot_sweeps(study, data)
    return {"finding": _finding(data), "setup": _setup(study, s, data),
            "tables": _tables(data), "meaning": _meaning(data) if not study.quick else "",
            "literature": _literature(data), "data": data}


def _mnist_arrays(study, read) -> tuple[str, int]:
    """MNIST, decoded once through tensorflow-datasets (the first `read` images of its train
    split and a sixth as many of test, None: all of both) with a stratified tenth of train held
    out for validation, as the toolkit holds it out, and saved as its `arrays` dataset in the
    study's run folder: every group of runs then reads it back in a moment instead of decoding
    the images again."""
    splits = {}
    for split in ("train", "test"):
        source = data_source("mnist", split, study.data_dir or None)
        if read:  # quick mode: the first images only (a sixth as many of test), at once
            count = read if split == "train" else read // 6
            examples = source.__getitems__(list(range(min(count, len(source)))))
            arrays = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in ("image",
                                                                                   "label")}
        else:
            arrays = read_all(source, ("image", "label"))
        splits[split] = (arrays["image"].astype(np.uint8), arrays["label"].astype(np.int32))
    x, y = splits.pop("train")
    parts = seeded_split(y, 0.1, 0.0, 0, True)
    splits.update({part: (x[parts[part]], y[parts[part]]) for part in ("train", "validation")})
    path = os.path.join(study.dir, "runs", "mnist.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **{f"{k}_{split}": v for split, pair in splits.items()
                      for k, v in zip("xy", pair)})
    return path, len(splits["train"][1])


def _config(study, path, batch, lr, seed, steps):
    return study.config(
        "digits_mlp.py", **{
            "dataset.name": "arrays", "dataset.path": path, "seed": seed,
            "model.width": WIDTH, "model.dropout": 0.0, "loss.label_smoothing": 0.0,
            "optimizer.name": "adam", "optimizer.learning_rate": lr,
            "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
            "dataset.batch_size": batch, "dataset.eval_batch_size": 1000, "steps": steps,
            # 25 evaluations, so the step that reaches the target is known to a few per cent
            "eval_every": max(1, steps // 25), "log_every": max(1, steps // 25),
            "checkpoint.every": steps})  # only the last step


def steps_to_target(r, target) -> float | None:
    """The step at which validation accuracy first reaches `target`, interpolated linearly
    between the evaluation below it and the one at or above it (from chance, 0.1, at step 0
    when the first evaluation already reaches it); None if no evaluation does."""
    steps, acc = r.curve("eval_accuracy")
    hit = np.flatnonzero(acc >= target)
    if not len(hit):
        return None
    i = hit[0]
    s0, a0 = (steps[i - 1], acc[i - 1]) if i else (0, 0.1)
    return float(s0 + (target - a0) / (acc[i] - a0) * (steps[i] - s0))


def _summary(b, t, reached) -> dict:
    steps = [reached[t.rate, r.config.seed] for r in t.runs]
    return {
        "batch_size": b, "learning_rate": t.rate, "at_edge": t.at_edge,
        "sweep": {f"{lr:g}": score for lr, score in t.sweep.items()},
        "sweep_steps": {f"{lr:g}": [reached[lr, seed] for lr_, seed in sorted(reached)
                                    if lr_ == lr] for lr in t.sweep},
        "steps_to_target": steps,
        "examples_to_target": [None if x is None else x * b for x in steps],
        "final_val_accuracy": [r.last("eval_accuracy") for r in t.runs],
        "test_accuracy": [r.test["accuracy"] if r.test else None for r in t.runs],
        "steps": int(t.runs[0].history[-1]["step"]),
    }


# --- the gradient noise scale
def _noise(study, s, path, tuned) -> dict:
    """Per seed, at initialisation (and after the smallest batch's tuned run): E|g_B - G|² for
    every batch size, |G|², and the fitted tr(Σ) and B_simple."""
    small = s["sizes"][0]
    study.say(f"gradient noise: {s['noise_batches']} mini-batches per batch size and seed")
    out = {"noise_where": ["init"] + (["trained"] if s["trained_noise"] else [])}
    rows = {where: [] for where in out["noise_where"]}
    dataset = run_api.load_dataset(_config(study, path, small, 1e-3, 0, 1))
    trainer = None
    for i, seed in enumerate(study.seeds):
        config = _config(study, path, small, tuned[small].rate, seed, 1)
        fresh = Trainer(config, run_api.build(config, dataset)[0], dataset)
        trainer = trainer or fresh  # one gradient function, compiled once per batch size
        rows["init"].append(_gradient_noise(trainer, fresh.initial_state, dataset, seed,
                                            s["noise_batches"], s["sizes"]))
        if s["trained_noise"]:
            rows["trained"].append(_gradient_noise(trainer, tuned[small].runs[i].summary["state"],
                                                   dataset, seed, s["noise_batches"],
                                                   s["sizes"]))
    for where, per_seed in rows.items():
        out[f"variance_{where}"] = [r["variance"] for r in per_seed]
        out[f"g2_{where}"] = [r["g2"] for r in per_seed]
        out[f"trace_{where}"] = [r["trace"] for r in per_seed]
        out[f"b_simple_{where}"] = [r["trace"] / r["g2"] for r in per_seed]
        out[f"slope_{where}"] = [_slope(s["sizes"], r["variance"]) for r in per_seed]
    return out


def _gradient_noise(trainer, state, dataset, seed, count, sizes) -> dict:
    """At fixed parameters `state`: G, the gradient on every training example; for each batch
    size B the mean over `count` mini-batches (drawn epoch by epoch without replacement, as
    training draws them) of |g_B - G|²; and tr(Σ), the per-example gradient variance that fits
    them under E|g_B - G|² = tr(Σ)/B · (N-B)/(N-1)."""
    n = dataset.num_examples("train")
    full = next(iter(dataset.train_batches(n, seed=seed, epoch=0)))
    g = np.asarray(ravel_pytree(trainer.gradients(state, full))[0], dtype=np.float64)
    variance = []
    for b in sizes:
        distances, epoch = [], 0
        while len(distances) < count:
            for batch in dataset.train_batches(b, seed=seed, epoch=1000 + epoch):
                g_b = np.asarray(ravel_pytree(trainer.gradients(state, batch))[0])
                distances.append(float(np.sum((g_b - g) ** 2)))
                if len(distances) == count:
                    break
            epoch += 1
        variance.append(float(np.mean(distances)))
    finite = np.array([(n - b) / (n - 1) / b for b in sizes])
    trace = float(np.exp(np.mean(np.log(variance) - np.log(finite))))
    return {"variance": variance, "g2": float(g @ g), "trace": trace}


def _slope(batch_sizes, values) -> float:
    return float(np.polyfit(np.log(batch_sizes), np.log(values), 1)[0])


# --- the critical batch size from the measured steps
def _critical(data) -> dict:
    """McCandlish et al.'s S = S_min (1 + B_crit / B) fitted to the mean steps to the target
    (least squares in S against 1/B), per seed and on the mean; and, for each doubling
    (quadrupling...) of the batch, whether it takes fewer steps (`compare`, log steps)."""
    b = np.array(data["batch_sizes"], dtype=float)
    rows = _seed_rows(data["tuned"], "steps_to_target")

    def fit(steps):
        ok = np.isfinite(steps)
        if ok.sum() < 3:
            return np.nan, np.nan
        slope, s_min = np.polyfit(1 / b[ok], steps[ok], 1)
        return float(s_min), float(slope / s_min) if s_min > 0 else np.inf

    per_seed = [fit(row) for row in rows]
    s_min, b_crit = fit(np.nanmean(rows, 0)) if np.isfinite(rows).any() else (np.nan, np.nan)
    steps = [compare(rows[:, j + 1], rows[:, j], log=True) for j in range(len(b) - 1)]
    with np.errstate(invalid="ignore"):
        mean = np.mean(rows, 0)  # inf where a seed missed the target
    epochs = mean * b / data["train_examples"]
    doubled = [int(x) for x, e in zip(b, epochs) if e >= 2 * np.min(epochs)]
    return {"s_min": s_min, "b_crit": b_crit, "b_crit_per_seed": [c for _, c in per_seed],
            # how many times fewer steps each step up in batch size takes (mean steps)
            "step_factors": [float(mean[j] / mean[j + 1]) for j in range(len(b) - 1)],
            # the measured critical batch size: the first whose epochs to the target are twice
            # the fewest (their model's S = 2 S_min, E = 2 E_min at B = B_crit)
            "b_epochs_doubled": doubled[0] if doubled else None,
            "larger_batch_fewer_steps": [c.verdict == "a" for c in steps],
            "step_comparisons": [{"p": c.p, "verdict": c.verdict,
                                  "words": c.words(f"batch {int(b[j + 1])}",
                                                   f"batch {int(b[j])}")}
                                 for j, c in enumerate(steps)]}


def _seed_rows(tuned, key):
    """One row per seed over the batch sizes, NaN (or inf for compare: the worst) where a run
    missed the target."""
    return np.array([[np.inf if t[key][i] is None else t[key][i] for t in tuned]
                     for i in range(len(tuned[0][key]))], dtype=float)


def _last_improving(data) -> int | None:
    """The largest batch size up to which every step up cut the steps significantly, or None
    if the first step up already did not."""
    b, better = data["batch_sizes"], data["larger_batch_fewer_steps"]
    last = None
    for j, ok in enumerate(better):
        if not ok:
            break
        last = b[j + 1]
    return last


# --- figures
def _plot_steps(study, data):
    fig, axes = new_figure(2, 1, width=4.6, height=4.0)
    b = np.array(data["batch_sizes"], dtype=float)
    n = data["train_examples"]
    steps = _seed_rows(data["tuned"], "steps_to_target")
    steps[~np.isfinite(steps)] = np.nan
    for ax, rows, label in ((axes[0, 0], steps, f"steps to {data['target']:.0%}"),
                            (axes[0, 1], steps * b / n, f"epochs to {data['target']:.0%}")):
        for row in rows:
            ax.plot(b, row, "o", color="tab:blue", alpha=0.35, markersize=3.5)
        ax.plot(b, np.nanmean(rows, 0), "-", color="tab:blue",
                label="measured (mean; dots: seeds)")
        ax.set_ylabel(label + " validation accuracy")
    fine = np.geomspace(b[0], b[-1], 100)
    if np.isfinite(data["b_crit"]) and data["b_crit"] > 0:
        model = data["s_min"] * (1 + data["b_crit"] / fine)
        label = f"fit S_min(1 + B_crit/B), B_crit = {data['b_crit']:.0f} (vertical)"
        axes[0, 0].plot(fine, model, "k--", linewidth=1, label=label)
        axes[0, 1].plot(fine, model * fine / n, "k--", linewidth=1, label=label)
        for ax in axes[0]:
            ax.axvline(data["b_crit"], color="k", linestyle="--", linewidth=0.8, alpha=0.6)
    first = np.nanmean(steps[:, 0])
    axes[0, 0].plot(fine, first * b[0] / fine, ":", color="gray", linewidth=1,
                    label="perfect scaling (steps x 1/B)")
    for where, color in (("init", "tab:green"), ("trained", "tab:orange")):
        if f"b_simple_{where}" not in data:
            continue
        value = np.mean(data[f"b_simple_{where}"])
        for ax in axes[0]:
            ax.axvline(value, color=color, linewidth=1.2, alpha=0.8,
                       label=f"B_simple {_where_words(data, where)} ({value:.0f})")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(b, [str(int(x)) for x in b])
        ax.set_xlabel("batch size B")
        ax.yaxis.set_major_formatter(PLAIN)
    axes[0, 1].yaxis.set_minor_formatter(PLAIN)  # under a decade: the minor ticks carry it
    axes[0, 0].legend(fontsize=7, loc="lower left")
    axes[0, 0].set_title("Steps (serial time)", fontsize=10)
    axes[0, 1].set_title("Epochs (computation)", fontsize=10)
    fig.suptitle(f"MNIST MLP, Adam, each batch size at its own tuned rate "
                 f"({len(steps)} seeds)", fontsize=10)
    study.figure(fig, "steps_to_target.png",
                 "Steps and epochs to the target validation accuracy against the batch size, "
                 "each at its own tuned learning rate: below the critical batch size a larger "
                 "batch needs proportionally fewer steps and about the same epochs; above it, "
                 "steps stop falling and epochs grow. Vertical lines: the gradient noise scale "
                 "B_simple measured at fixed parameters.")


def _where_words(data, where) -> str:
    return ("at init" if where == "init" else
            f"after batch-{data['batch_sizes'][0]} run")


def _plot_variance(study, data):
    fig, axes = new_figure(1, 1, width=6.0, height=4.2)
    ax = axes[0, 0]
    b, n = np.array(data["batch_sizes"], dtype=float), data["train_examples"]
    for where, color, marker in (("init", "tab:green", "o"), ("trained", "tab:orange", "s")):
        if f"variance_{where}" not in data:
            continue
        rows = np.array(data[f"variance_{where}"])
        for row in rows:
            ax.plot(b, row, marker, color=color, alpha=0.35, markersize=3.5)
        trace = np.mean(data[f"trace_{where}"])
        ax.plot(b, trace / b * (n - b) / (n - 1), "-", color=color, linewidth=1,
                label=f"{_where_words(data, where)}: tr(Σ)/B fit (slope "
                      f"{np.mean(data[f'slope_{where}']):.2f} measured)")
        ax.axhline(np.mean(data[f"g2_{where}"]), color=color, linestyle="--", linewidth=1,
                   label=f"|G|² {_where_words(data, where)}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(b, [str(int(x)) for x in b])
    ax.set_xlabel("batch size B")
    ax.set_ylabel("squared gradient norm")
    ax.legend(fontsize=7.5, loc="lower left")
    ax.set_title("Mini-batch gradient noise E|g_B - G|² (dots: seeds) beside the full-batch "
                 "|G|²:\nthey cross at B_simple = tr(Σ)/|G|²", fontsize=10)
    study.figure(fig, "gradient_noise.png",
                 "The mini-batch gradient's squared distance from the full-training-set "
                 "gradient falls as 1/B; where it equals |G|² (dashed) the batch size is the "
                 "noise scale B_simple.")


def _plot_sweeps(study, data):
    fig, axes = new_figure(1, 1, width=6.0, height=4.0)
    ax = axes[0, 0]
    for t in data["tuned"]:
        rates = sorted(float(lr) for lr in t["sweep"])
        scores = [t["sweep"][f"{lr:g}"] for lr in rates]
        ax.plot(rates, scores, "o-", color=COLORS.get(t["batch_size"]), markersize=3.5,
                label=f"{t['batch_size']}")
        ax.plot([t["learning_rate"]], [t["sweep"][f"{t['learning_rate']:g}"]], "*",
                color=COLORS.get(t["batch_size"]), markersize=11)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.set_xlabel("learning rate (Adam)")
    ax.set_ylabel("score: mean steps to the target")
    ax.legend(fontsize=7, title="batch size", title_fontsize=7, ncols=2)
    ax.set_title("Each batch size's learning-rate sweep (star: the rate used;\na run that "
                 "misses the target scores 2x its budget or more)", fontsize=10)
    study.figure(fig, "rate_sweeps.png",
                 "The learning-rate sweep at each batch size: the best rate (star) grows with "
                 "the batch.")


# --- the report
def _finding(data) -> str:
    b, t = data["batch_sizes"], data["tuned"]
    small, large = t[0], t[-1]
    text = (f"With each batch size at its own tuned Adam rate ({_rates(data)}), the steps to "
            f"{data['target']:.0%} validation accuracy on MNIST fall from "
            f"{_mean(small['steps_to_target'])} at batch {b[0]} to "
            f"{_mean(large['steps_to_target'])} at {b[-1]}, while the epochs rise from "
            f"{_epochs(data, small)} to {_epochs(data, large)}")
    if len(b) > 3:
        f = data["step_factors"]
        text += (f"; doubling the batch takes {f[0]:.1f}x fewer steps at {b[0]} but only "
                 f"{f[-1]:.1f}x at {b[-2]} ({_significance(data)}), the epochs reach twice "
                 f"their fewest at batch {data['b_epochs_doubled']}, and the fit of "
                 f"S = S_min(1 + B_crit/B) gives B_crit = {data['b_crit']:.0f}")
    text += (f". The gradient noise scale B_simple = tr(Σ)/|G|² is "
             f"{spread(data['b_simple_init'])} at initialisation")
    if "b_simple_trained" in data:
        text += f" and {spread(data['b_simple_trained'])} at the end of the batch-{b[0]} run"
    return text + (f"; the mini-batch gradient's variance falls with log-log slope "
                   f"{_slopes(data['slope_init'])} (1/B is -1).")


def _significance(data) -> str:
    last = _last_improving(data)
    if last == data["batch_sizes"][-1]:
        return "every doubling significant, paired t-test"
    return (f"significant up to {last}, paired t-test" if last else
            "no doubling significant, paired t-test")


def _slopes(values) -> str:
    """'-1.03 (-1.06 to -0.98)': spread's mean and range, without a double minus."""
    return f"{np.mean(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def _mean(values) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return "never (target missed)"
    note = "" if len(reached) == len(values) else f" ({len(reached)}/{len(values)} seeds)"
    return f"{np.mean(reached):,.0f}{note}"


def _epochs(data, t) -> str:
    reached = [v / data["train_examples"] for v in t["examples_to_target"] if v is not None]
    return f"{np.mean(reached):.2f}" if reached else "-"


def _rates(data) -> str:
    return ", ".join(f"{t['learning_rate']:g} at {t['batch_size']}" for t in data["tuned"])


def _setup(study, s, data) -> str:
    n = data["train_examples"]
    sweep = ("one rate per batch size, the rung of the 1-3-10 ladder nearest 1e-3·sqrt(B/32) "
             "(quick mode: no sweep)" if s["rungs"] == 1 else
             f"each batch size's rate tuned by `tune`: {s['rungs']} rungs of the 1-3-10 ladder "
             f"centred on the rung nearest 1e-3·sqrt(B/32), {extending(s['extensions'])}")
    return (
        f"MNIST: {n:,} training images (the other 6,000 of the training split held out for "
        f"validation), read once through tensorflow-datasets and handed to every run as the "
        f"toolkit's `arrays` dataset (pixels scaled to [0, 1]). An MLP with 2 hidden ReLU "
        f"layers of {WIDTH}, no dropout, no label smoothing, trained with Adam at a constant "
        f"learning rate at batch sizes {', '.join(map(str, s['sizes']))}, for "
        f"{s['examples']:,} examples' worth of steps or at least {s['min_steps']} steps "
        f"(steps per batch size: {', '.join(map(str, data['budget_steps']))}), evaluated on "
        f"validation 25 times per run. The target is {s['target']:.0%} validation accuracy; "
        f"the step that reaches it is interpolated linearly between the evaluation below it "
        f"and the first at or above it; epochs to the target are its steps x B / {n:,}. "
        f"Learning rate: {sweep}; the score is the mean over the seeds of the steps to the "
        f"target, and a run that misses it scores its budget x (2 + the accuracy it lacks). "
        f"Where one batch size is said to take fewer steps than another, a paired t-test "
        f"over the seeds on log steps says so (p < 0.05), else they tie. Gradient noise "
        f"(McCandlish et al. 2018): at fixed parameters, G is the gradient on all {n:,} "
        f"training examples and g_B a mini-batch's (`Trainer.gradients`); E|g_B - G|² is the "
        f"mean over {s['noise_batches']} mini-batches per batch size, drawn as training draws "
        f"them; tr(Σ), the per-example gradient variance, is fitted to every batch size's "
        f"value under E|g_B - G|² = tr(Σ)/B·(N-B)/(N-1) (drawing without replacement); "
        f"B_simple = tr(Σ)/|G|². Measured at each seed's initialisation"
        + (f" and at the end of its batch-{s['sizes'][0]} run at the tuned rate"
           if s["trained_noise"] else "")
        + f". Critical batch size: S = S_min(1 + B_crit/B), their model of the steps to a "
          f"target, fitted by least squares of the mean steps against 1/B. No timings: on "
          f"this shared 2-core CPU the runs of a sweep train together as one program, so a "
          f"batch size's own step time is not measured. Seeds "
          f"{', '.join(map(str, study.seeds))} change the initial weights and the batch order.")


def _tables(data) -> list[Table]:
    n = data["train_examples"]
    rows = []
    for t, comparison in zip(data["tuned"], [None] + data["step_comparisons"]):
        reached = [x for x in t["steps_to_target"] if x is not None]
        epochs = [x / n for x in t["examples_to_target"] if x is not None]
        note = "" if len(reached) == len(t["steps_to_target"]) else (
            f" ({len(reached)}/{len(t['steps_to_target'])} seeds)")
        rows.append([
            t["batch_size"], f"{t['learning_rate']:g}" + (" (edge)" if t["at_edge"] else ""),
            t["steps"], (spread(reached) + note) if reached else "not reached",
            spread(epochs) if epochs else "-",
            comparison["words"] if comparison else "-",
            spread(t["final_val_accuracy"])])
    sweep = [[t["batch_size"], ", ".join(
        f"{lr}: {score:,.0f}" if np.isfinite(score) else f"{lr}: diverged"
        for lr, score in t["sweep"].items())] for t in data["tuned"]]
    tables = [
        Table(f"Each batch size at its tuned rate (mean (min-max) over seeds); the target is "
              f"{data['target']:.0%} validation accuracy",
              ["batch", "learning rate", "steps trained", "steps to target", "epochs to target",
               "against the next smaller batch (steps)", "final validation accuracy"], rows),
        Table("The learning-rate sweeps: mean score (steps to the target; 2x the budget and "
              "more for a rate that misses it) per rate", ["batch", "rate: score"], sweep)]
    noise = []
    for where in data["noise_where"]:
        noise.append([_where_words(data, where), spread(data[f"g2_{where}"]),
                      spread(data[f"trace_{where}"]), spread(data[f"b_simple_{where}"]),
                      _slopes(data[f"slope_{where}"])])
    tables.append(Table("The gradient noise scale (mean (min-max) over seeds)",
                        ["where", "|G|²", "tr(Σ)", "B_simple = tr(Σ)/|G|²",
                         "log-log slope of E|g_B - G|²"], noise))
    return tables


def _meaning(data) -> str:
    b, t, f = data["batch_sizes"], data["tuned"], data["step_factors"]
    epochs = [_epochs(data, x) for x in t]
    b_init, b_trained = np.mean(data["b_simple_init"]), np.mean(data["b_simple_trained"])
    crit, doubled = data["b_crit"], data["b_epochs_doubled"]
    ratio = max(crit / b_trained, b_trained / crit)
    return (
        f"Both sides of the claim are real, and McCandlish et al.'s noise scale says where "
        f"they balance. Gradient quality: the mini-batch gradient's variance falls as 1/B "
        f"(slope {np.mean(data['slope_init']):.2f}), and with its rate retuned (the best "
        f"rate grows from {t[0]['learning_rate']:g} at batch {b[0]} to "
        f"{t[-1]['learning_rate']:g} at {b[-1]}) a larger batch turns the cleaner gradient "
        f"into fewer steps: {_mean(t[0]['steps_to_target'])} at {b[0]}, "
        f"{_mean(t[-1]['steps_to_target'])} at {b[-1]}. Computational efficiency: each "
        f"doubling of the batch takes {f[0]:.1f}x fewer steps at {b[0]} but only "
        f"{f[-1]:.1f}x at {b[-2]} ({_significance(data)}), so the examples processed to "
        f"reach {data['target']:.0%} go from {epochs[0]} epochs at {b[0]} to {epochs[-1]} at "
        f"{b[-1]}, twice their fewest from batch {doubled} on. That is the critical batch "
        f"size of their model, measured (the fit gives {crit:.0f}). The gradient noise scale "
        f"predicts it only once measured where the target is: B_simple is {b_init:.0f} at "
        f"initialisation, {crit / b_init:.0f}x below, and {b_trained:.0f} at the end of the "
        f"batch-{b[0]} run (validation accuracy {spread(t[0]['final_val_accuracy'])}, about "
        f"the target), within {ratio:.1f}x of it; the noise scale grows as the loss falls, "
        f"as they report. On this task and target the article's range is about right: up "
        f"to batch {b[b.index(doubled) - 1] if doubled in b[1:] else b[-1]} a larger batch "
        f"saves steps at almost no extra computation, beyond it every saved step costs "
        f"examples. But the balance is where the noise scale at the target puts it, not a "
        f"fixed range: here it grew {b_trained / b_init:.1f}x between initialisation and the "
        f"target.")


def _literature(data) -> list[Cited]:
    b, t = data["batch_sizes"], data["tuned"]
    rates = [x["learning_rate"] for x in t]
    rate_slope = _slope(b, rates)
    have_trained = "b_simple_trained" in data
    noise = (f"B_simple {np.mean(data['b_simple_init']):.0f} at initialisation"
             + (f", {np.mean(data['b_simple_trained']):.0f} after training"
                if have_trained else "")
             + (f"; critical batch size fitted to the steps {data['b_crit']:.0f}"
                if len(b) > 3 else ""))
    grows = have_trained and np.mean(data["b_simple_trained"]) > np.mean(data["b_simple_init"])
    if have_trained and len(b) > 3:
        ratio = max(data["b_crit"] / np.mean(data["b_simple_trained"]),
                    np.mean(data["b_simple_trained"]) / data["b_crit"])
        verdict = ((f"agrees: B_simple near the target is within {ratio:.1f}x of the critical "
                    if ratio <= 3 else f"disagrees: B_simple near the target is {ratio:.1f}x "
                    "off the critical ")
                   + "batch size, and " + ("grows" if grows else "does not grow")
                   + " as the loss falls")
    else:
        verdict = "not comparable: quick mode measures B_simple at initialisation only"
    return [
        Cited("McCandlish et al. 2018",
              "the gradient noise scale (B_simple = tr(Σ)/|G|² its simple estimate) predicts "
              "the critical batch size, beyond which the steps to a target stop falling in "
              "proportion, on tasks from MNIST to Dota; the noise scale grows as the loss falls",
              noise, verdict),
        Cited("Smith et al. 2018 (Don't decay the learning rate, increase the batch size)",
              "for SGD the noise scale of training is g ≈ lr·N/B, so the best rate grows in "
              "proportion to B",
              f"with Adam the tuned rate grows as B^{rate_slope:.2f} over batch {b[0]}-{b[-1]} "
              f"(a log-log fit to rungs of the 1-3-10 ladder)",
              "not comparable: Adam, not SGD; Adam's steps scale the gradient by its own "
              "running size, for which the square-root rule is the analogue"),
        Cited("Goyal et al. 2017",
              "with the learning rate scaled linearly with the batch and a warm-up, ResNet-50 "
              "on ImageNet trains to the batch-256 accuracy at batches up to 8,192",
              f"at its own tuned rate every batch size up to {b[-1]} reaches the target",
              "not comparable: ImageNet at a fixed epoch budget with SGD, against an MNIST MLP "
              "with Adam and a target accuracy"),
        Cited("Keskar et al. 2017",
              "large batches (10% of the training set) reach sharp minima and generalise worse "
              "than small ones (256) trained to the same training accuracy",
              f"final validation accuracy {spread(t[0]['final_val_accuracy'])} at {b[0]}, "
              f"{spread(t[-1]['final_val_accuracy'])} at {b[-1]}",
              "not comparable: our runs stop after a budget near the target, not at "
              "convergence, and the large batch's budget holds more epochs"),
    ]
