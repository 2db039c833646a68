"""Overfitting: a large MLP memorises 100 digits; do dropout, weight decay and early stopping
keep it from doing so, does it memorise labels that mean nothing as readily, and how does the
gap close with more data?

A wide MLP is trained on a stratified subset of 100 of scikit-learn's digits (10 per class)
until it fits them perfectly, alone, with dropout, with decoupled weight decay (AdamW) and with
early stopping on the validation loss, each regime at its own learning rate. The gap is measured
on the weights each run hands over: the loss on the whole training subset, evaluated with
dropout off, against the validation loss. Two controls: the same images with their labels
shuffled (Zhang et al. 2017's random labels), and the training set grown to 300 and 1,000
images, with and without dropout.

Larger, on an accelerator: the same regimes on 1,000 MNIST images with a wider net.
"""
import os

import numpy as np

from experiments import run as run_api
from experiments.studies.common import (Cited, Table, band, compare, extending, new_figure,
                                        on_grid, spread, tune)

TITLE = "Overfitting and regularisation"
CLAIM = ("Networks can memorise rather than generalise; this is prevented through "
         "regularisation, dropout and early stopping.")
SEEDS = 5

TRAIN_EXAMPLES, BATCH = 100, 32
DROPOUT, WEIGHT_DECAY, PATIENCE = 0.5, 1.0, 5
REGIMES = ("none", "dropout", "weight decay", "early stopping")
RANDOM = "random labels"
SHUFFLE_SEED = 0  # the one permutation of the 100 labels every seed trains on
CHANCE = 0.1  # ten balanced classes
COLORS = {"none": "tab:red", "dropout": "tab:blue", "weight decay": "tab:green",
          "early stopping": "tab:purple", RANDOM: "tab:gray"}


def settings(quick: bool) -> dict:
    if quick:  # a narrower net, fewer steps, one rate, sizes without dropout: seconds
        return dict(width=256, depth=2, steps=300, eval_every=15, rates=(3e-3,), extensions=0,
                    sizes=(100, 1000), size_regimes=("none",))
    return dict(width=512, depth=2, steps=800, eval_every=12, rates=(3e-4, 1e-3, 3e-3),
                extensions=1, sizes=(100, 300, 1000), size_regimes=("none", "dropout"))


def run(study) -> dict:
    s = settings(study.quick)
    extra = len(s["size_regimes"]) * (len(s["sizes"]) - 1) * len(study.seeds)
    study.plan(len(study.seeds) * len(s["rates"]) * (len(REGIMES) + 1) + extra)
    tuned = {regime: tune(study, _slug(regime),
                          lambda lr, seed, regime=regime: _config(study, s, regime, lr, seed),
                          s["rates"], score=_score, extensions=s["extensions"])
             for regime in REGIMES}
    runs = {regime: t.runs for regime, t in tuned.items()}
    rate = {regime: t.rate for regime, t in tuned.items()}
    shuffled = _shuffled_labels(study, s)
    tuned[RANDOM] = tune(study, "random_labels", lambda lr, seed: _config(
        study, s, "none", lr, seed, data=shuffled), s["rates"], score=_training_loss,
        extensions=s["extensions"])
    runs[RANDOM], rate[RANDOM] = tuned[RANDOM].runs, tuned[RANDOM].rate
    if rate[RANDOM] == rate["none"]:
        true_labels = runs["none"]
    else:  # how long true labels take to fit at the random labels' rate: Zhang et al.'s pairing
        study.plan_more(len(study.seeds))
        true_labels = study.train_seeds(f"true_labels-lr{rate[RANDOM]:g}", lambda seed: _config(
            study, s, "none", rate[RANDOM], seed))
    by_size = {regime: {n: runs[regime] if n == TRAIN_EXAMPLES else study.train_seeds(
        f"{_slug(regime)}-n{n}", lambda seed, regime=regime, n=n: _config(
            study, s, regime, rate[regime], seed, examples=n)) for n in s["sizes"]}
        for regime in s["size_regimes"]}

    data = {"steps": s["steps"], "width": s["width"], "depth": s["depth"],
            "regimes": {arm: {**_summary(rs), "rate": rate[arm]} for arm, rs in runs.items()},
            "sweeps": {regime: {"rates": {f"{lr:g}": v if np.isfinite(v) else None
                                          for lr, v in t.sweep.items()},
                                "at_edge": t.at_edge} for regime, t in tuned.items()}}
    data["sizes"] = {regime: {str(n): (data["regimes"][regime] if n == TRAIN_EXAMPLES
                                       else _summary(rs)) for n, rs in sized.items()}
                     for regime, sized in by_size.items()}
    data["fitted_at"] = {"rate": rate[RANDOM], "true": [_fitted_at(r) for r in true_labels],
                         RANDOM: [_fitted_at(r) for r in runs[RANDOM]]}
    data["compared"] = _comparisons(data)

    _plot_memorisation(study, true_labels, runs[RANDOM], data, s)
    _plot_curves(study, runs, s)
    _plot_gaps(study, data)
    _plot_early_stopping(study, runs, data, s)
    return {"finding": _finding(data, s), "setup": _setup(study, s, data),
            "tables": _tables(data), "meaning": _meaning(data),
            "literature": _literature(data, s), "data": data}


def _slug(arm: str) -> str:
    return arm.replace(" ", "_")


def _config(study, s, regime, lr, seed, examples=TRAIN_EXAMPLES, data=None):
    overrides = {
        "seed": seed, "dataset.train_examples": examples, "dataset.batch_size": BATCH,
        "model.width": s["width"], "model.depth": s["depth"], "model.dropout": 0.0,
        "loss.label_smoothing": 0.0, "optimizer.name": "adam", "optimizer.learning_rate": lr,
        "optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 50,
        "steps": s["steps"], "eval_every": s["eval_every"], "log_every": s["eval_every"],
        # one checkpoint, the last: the test metrics are then those of the final weights
        "checkpoint.every": s["steps"], "early_stopping.monitor": "eval_loss"}
    if data:  # the same images from an .npz, the training labels shuffled
        overrides.update({"dataset.name": "arrays", "dataset.path": data,
                          "dataset.standardize": False, "dataset.train_examples": 0})
    if regime == "dropout":
        overrides["model.dropout"] = DROPOUT
    elif regime == "weight decay":
        overrides.update({"optimizer.name": "adamw", "optimizer.weight_decay": WEIGHT_DECAY})
    elif regime == "early stopping":  # a checkpoint at every evaluation, so the best is kept
        overrides.update({"early_stopping.patience": PATIENCE, "checkpoint.every": 0})
    return study.config("digits_mlp.py", **overrides)


def _score(r) -> float:
    """What each regime's rate sweep minimises: the validation loss of the weights it hands
    over (early stopping: of the checkpoint it kept, the lowest it saw); inf if it diverged."""
    if r.diverged:
        return np.inf
    losses = r.curve("eval_loss")[1]
    return float(losses.min() if r.config.early_stopping.patience else losses[-1])


def _training_loss(r) -> float:
    """What the random-label arm's rate sweep minimises: its final training loss (a validation
    loss on random labels cannot choose a rate); inf if it diverged."""
    return np.inf if r.diverged else r.last("train_loss")


def _shuffled_labels(study, s) -> str:
    """An .npz of the 100 training images with their labels permuted (one permutation, drawn
    from SHUFFLE_SEED), beside the untouched validation and test splits: the arrays dataset
    reads it, so the random-label runs see exactly the images the others do."""
    dataset = run_api.load_dataset(_config(study, s, "none", 1e-3, 0))
    splits = dataset.splits
    shuffled = np.random.default_rng(SHUFFLE_SEED).permutation(splits["train"]["targets"])
    path = os.path.join(study.dir, "runs", "random_labels.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, x_train=splits["train"]["inputs"], y_train=shuffled,
             x_validation=splits["validation"]["inputs"],
             y_validation=splits["validation"]["targets"],
             x_test=splits["test"]["inputs"], y_test=splits["test"]["targets"])
    return path


def _clean_train_metrics(r, dataset) -> dict:
    """Loss and accuracy of the run's final weights on its whole training subset, dropout off:
    the logged training loss is an average over mini-batches with dropout on."""
    batches = dataset.eval_batches("train", r.config.dataset.eval_batch_size)
    return r.summary["trainer"].evaluate(r.summary["state"], batches)


def _delivered(r, dataset) -> tuple[dict, float, float]:
    """The clean training metrics, validation loss and accuracy of the weights a run hands
    over: its final ones, or for early stopping the checkpoint it kept."""
    steps = list(r.curve("eval_loss")[0])
    kept = r.test["step"]
    if kept == int(r.summary["state"].step):
        return _clean_train_metrics(r, dataset), r.last("eval_loss"), r.last("eval_accuracy")
    at = steps.index(kept)
    return (run_api.evaluate(r.workdir, "best", "train"), float(r.curve("eval_loss")[1][at]),
            float(r.curve("eval_accuracy")[1][at]))


def _summary(rs) -> dict:
    dataset = run_api.load_dataset(rs[0].config)  # the seeds of an arm share their data
    delivered = [_delivered(r, dataset) for r in rs]
    train = [t for t, _, _ in delivered]
    val_loss = [v for _, v, _ in delivered]
    val_acc = [a for _, _, a in delivered]
    return {
        "examples": rs[0].config.dataset.train_examples or TRAIN_EXAMPLES,
        "train_loss": [t["loss"] for t in train], "train_accuracy": [t["accuracy"] for t in train],
        "val_loss": val_loss, "val_accuracy": val_acc,
        "loss_gap": [v - t["loss"] for v, t in zip(val_loss, train)],
        "accuracy_gap": [t["accuracy"] - v for v, t in zip(val_acc, train)],
        "min_val_loss": [float(r.curve("eval_loss")[1].min()) for r in rs],
        "stopped_step": [int(r.summary["state"].step) for r in rs],
        "kept_step": [r.test["step"] for r in rs],  # the checkpoint the test metrics are of
        "test_loss": [r.test["loss"] for r in rs],
        "test_accuracy": [r.test["accuracy"] for r in rs],
    }


def _fitted_at(r) -> int | None:
    """The first logged step whose mini-batches since the previous record were all classified
    right: when the net has fitted its training labels (None if it never did)."""
    steps, accuracy = r.curve("train_accuracy")
    done = np.flatnonzero(accuracy >= 1.0)
    return int(steps[done[0]]) if len(done) else None


def _comparisons(data) -> dict:
    """Every paired t-test the report's words rest on, as dicts (`Compared`)."""
    d = data["regimes"]
    out = {f"{r} gap": compare(d[r]["loss_gap"], d["none"]["loss_gap"])._asdict()
           for r in REGIMES[1:]}
    out.update({f"{r} test loss": compare(d[r]["test_loss"], d["none"]["test_loss"])._asdict()
                for r in REGIMES[1:]})
    out.update({f"{r} test accuracy": compare(d[r]["test_accuracy"], d["none"]["test_accuracy"],
                                              lower_is_better=False)._asdict()
                for r in REGIMES[1:]})
    for regime, sized in data["sizes"].items():
        largest = max(sized, key=int)
        out[f"{regime} gap, {largest} against {TRAIN_EXAMPLES} examples"] = compare(
            sized[largest]["loss_gap"], sized[str(TRAIN_EXAMPLES)]["loss_gap"])._asdict()
    if "dropout" in data["sizes"]:
        for n in data["sizes"]["dropout"]:
            out[f"dropout gap at {n} examples"] = compare(
                data["sizes"]["dropout"][n]["loss_gap"],
                data["sizes"]["none"][n]["loss_gap"])._asdict()
            out[f"dropout test accuracy at {n} examples"] = compare(
                data["sizes"]["dropout"][n]["test_accuracy"],
                data["sizes"]["none"][n]["test_accuracy"], lower_is_better=False)._asdict()
    return out


def _verdict(data, key: str, a: str, b: str) -> str:
    c = data["compared"][key]
    test = f"paired t-test over {c['seeds']} seeds, p = {c['p']:.2g}"
    if c["verdict"] == "tie":
        return f"{a} and {b} tie ({test})"
    winner, loser = (a, b) if c["verdict"] == "a" else (b, a)
    return f"{winner} beats {loser} ({test})"


def _gap_words(data, regime: str) -> str:
    c = data["compared"][f"{regime} gap"]
    d = data["regimes"][regime]
    p = f"p = {c['p']:.2g}"
    if c["verdict"] == "tie":
        return f"{regime} leaves it where it was ({spread(d['loss_gap'])}, a tie: {p})"
    return (f"{regime} {'narrows' if c['verdict'] == 'a' else 'widens'} it to "
            f"{spread(d['loss_gap'])} ({p})")


def _steps(values) -> str:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    if np.isnan(v).all():
        return "never"
    shown = f"{np.nanmean(v):.0f}" + (f" ({np.nanmin(v):.0f}-{np.nanmax(v):.0f})"
                                      if len(v) > 1 else "")
    missing = int(np.isnan(v).sum())
    return shown + (f", {missing} of {len(v)} never" if missing else "")


def _finding(data, s) -> str:
    d = data["regimes"]
    none, shuffled = d["none"], d[RANDOM]
    sizes = data["sizes"]["none"]
    largest = max(sizes, key=int)
    bigger = data["compared"][f"none gap, {largest} against {TRAIN_EXAMPLES} examples"]
    return (
        f"Trained on {TRAIN_EXAMPLES} digits, the unregularised {s['depth']}x{s['width']} MLP "
        f"fits them (training loss {np.mean(none['train_loss']):.0e}, training accuracy "
        f"{np.mean(none['train_accuracy']):.2f}) and {_fits(shuffled)} the same images with "
        f"their labels shuffled (training loss {np.mean(shuffled['train_loss']):.0e}, training "
        f"accuracy {spread(shuffled['train_accuracy'])}) while scoring "
        f"{spread(shuffled['val_accuracy'])} on validation, chance being {CHANCE}; with true "
        f"labels its validation loss ends {spread(none['loss_gap'])} above its training loss, "
        f"a gap that {_moves(bigger)} {spread(sizes[largest]['loss_gap'])} with "
        f"{int(largest):,} training images (paired t-test p = {bigger['p']:.2g}; test accuracy "
        f"{spread(none['test_accuracy'])} -> {spread(sizes[largest]['test_accuracy'])}), "
        f"while at {TRAIN_EXAMPLES} images {_gap_words(data, 'dropout')} and "
        f"{_gap_words(data, 'weight decay')}; on test loss "
        f"{_verdict(data, 'early stopping test loss', 'early stopping', 'training to the end')}"
        f".")


def _fits(d) -> str:
    accuracy = min(d["train_accuracy"])
    return "fits all of" if accuracy == 1.0 else f"fits at least {accuracy:.0%} of"


def _moves(c) -> str:
    return {"a": "falls to", "b": "rises to", "tie": "is, within the seeds' spread, the same"
            " (a tie) at"}[c["verdict"]]


# --- figures
def _epochs(steps, examples=TRAIN_EXAMPLES):
    return np.asarray(steps) / (examples // BATCH)


def _plot_memorisation(study, true_labels, shuffled, data, s):
    grid = np.arange(s["eval_every"], s["steps"] + 1, s["eval_every"])
    fig, axes = new_figure(2, 2, width=4.8, height=3.5)
    (loss_ax, acc_ax), (gap_ax, test_ax) = axes
    for rs, arm, label in ((true_labels, "none", "true labels"),
                           (shuffled, RANDOM, "shuffled labels")):
        band(loss_ax, _epochs(grid), on_grid(rs, "train_loss", grid), label, COLORS[arm])
        band(acc_ax, _epochs(grid), on_grid(rs, "eval_accuracy", grid), label, COLORS[arm])
    acc_ax.axhline(CHANCE, color="k", lw=0.8, ls=":", label="chance (10 classes)")
    for ax in (loss_ax, acc_ax):
        ax.set_xscale("log")
        ax.set_xlabel(f"epoch over the {TRAIN_EXAMPLES} training images (log scale)")
        ax.legend(fontsize=8)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss on mini-batches (log scale)")
    loss_ax.set_title(f"Training loss, both at rate {data['fitted_at']['rate']:g}", fontsize=10)
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("validation accuracy (true labels)")
    acc_ax.set_title(f"Validation accuracy, both at rate {data['fitted_at']['rate']:g}",
                     fontsize=10)
    for regime, sized in data["sizes"].items():
        sizes = sorted(map(int, sized))
        for ax, key in ((gap_ax, "loss_gap"), (test_ax, "test_accuracy")):
            values = np.array([sized[str(n)][key] for n in sizes])  # (sizes, seeds)
            ax.plot(sizes, values.mean(1), "-o", color=COLORS[regime], markersize=4,
                    label=f"{'no regularisation' if regime == 'none' else regime}: mean")
            for n, v in zip(sizes, values):
                ax.plot([n] * len(v), v, ".", color=COLORS[regime], alpha=0.5, markersize=5)
    for ax, label, title in ((gap_ax, "validation - training loss",
                              "Gap against training-set size"),
                             (test_ax, "test accuracy", "Test accuracy against training-set size")):
        ax.set_xscale("log")
        ax.set_xticks(sorted(map(int, data["sizes"]["none"])),
                      [f"{int(n):,}" for n in sorted(map(int, data["sizes"]["none"]))])
        ax.set_xlabel("training images (log scale; dots: seeds)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    gap_ax.set_ylim(bottom=0)
    fig.suptitle(f"A {s['depth']}x{s['width']} MLP on digits, cross-entropy (lines: mean; "
                 f"shading: min-max over {len(study.seeds)} seeds)", fontsize=11)
    study.figure(fig, "memorisation.png",
                 f"Top: the unregularised net on {TRAIN_EXAMPLES} digits with their true labels "
                 f"and with the labels shuffled, both at the rate that fits the shuffled ones "
                 f"best ({data['fitted_at']['rate']:g}). Bottom: the gap between validation and "
                 f"training loss, and the "
                 f"test accuracy, of the final weights as the training set grows (same steps).")


def _plot_curves(study, runs, s):
    grid = np.arange(s["eval_every"], s["steps"] + 1, s["eval_every"])
    fig, axes = new_figure(3, 1, width=4.2, height=3.8)
    panels = (("train_loss", "training loss (log scale)", "Training loss (mini-batches)"),
              ("eval_loss", "validation loss", "Validation loss"),
              ("eval_accuracy", "validation accuracy", "Validation accuracy"))
    for ax, (key, label, title) in zip(axes[0], panels):
        for regime in ("none", "dropout", "weight decay"):
            band(ax, _epochs(grid), on_grid(runs[regime], key, grid), regime, COLORS[regime])
        ax.set_xscale("log")
        ax.set_xlabel(f"epoch over the {TRAIN_EXAMPLES} training images (log scale)")
        ax.set_ylabel(label)
        ax.set_title(title)
    axes[0, 0].set_yscale("log")
    low = min(float(np.nanmin(on_grid(runs[r], "eval_loss", grid))) for r in REGIMES)
    axes[0, 1].set_ylim(0.8 * low, 3 * low)
    axes[0, 2].set_ylim(0.8, 1.0)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"A {s['depth']}x{s['width']} MLP on {TRAIN_EXAMPLES} digits, each regime at "
                 f"its own rate (mean and min-max over seeds)")
    study.figure(fig, "curves.png",
                 "Training loss (as logged on mini-batches: with dropout on, for the dropout "
                 "run), validation loss and validation accuracy during training. The gap table "
                 "evaluates the training loss on the final weights with dropout off.")


def _plot_gaps(study, data):
    fig, axes = new_figure(2, 1, width=4.6, height=3.8)
    for ax, key, label in ((axes[0, 0], "loss_gap", "validation loss - training loss"),
                           (axes[0, 1], "accuracy_gap", "training - validation accuracy")):
        for i, regime in enumerate(REGIMES):
            values = data["regimes"][regime][key]
            ax.bar(i, np.mean(values), color=COLORS[regime], alpha=0.6)
            ax.plot([i] * len(values), values, "k.", markersize=6)
        ax.set_xticks(range(len(REGIMES)), [r.replace(" ", "\n") for r in REGIMES])
        ax.set_ylabel(label)
        ax.set_xlabel("regularisation (dots: seeds; bar: mean)")
    axes[0, 0].set_title("Loss gap")
    axes[0, 1].set_title("Accuracy gap")
    fig.suptitle(f"The train/validation gap of the weights each regime hands over "
                 f"({TRAIN_EXAMPLES} images)")
    study.figure(fig, "gaps.png",
                 "The gap of the final weights (early stopping: of the checkpoint it kept), the "
                 "training split evaluated with dropout off.")


def _plot_early_stopping(study, runs, data, s):
    grid = np.arange(s["eval_every"], s["steps"] + 1, s["eval_every"])
    fig, axes = new_figure(1, 1, width=6.4, height=4.0)
    ax = axes[0, 0]
    band(ax, _epochs(grid), on_grid(runs["none"], "eval_loss", grid),
         "no regularisation, trained to the end", COLORS["none"])
    es = data["regimes"]["early stopping"]
    for i, r in enumerate(runs["early stopping"]):
        steps, loss = r.curve("eval_loss")
        ax.plot(_epochs(steps), loss, color=COLORS["early stopping"], lw=1.2, ls="--",
                label="early stopping: validation loss until the stop" if i == 0 else None)
        kept = es["kept_step"][i]
        ax.plot(_epochs(kept), loss[list(steps).index(kept)], "o",
                color=COLORS["early stopping"], label="checkpoint kept" if i == 0 else None)
        ax.axvline(_epochs(es["stopped_step"][i]), color=COLORS["early stopping"], lw=0.8,
                   ls=":", label=f"stopped ({PATIENCE} evaluations without improvement)"
                   if i == 0 else None)
    ax.set_xscale("log")
    ax.set_ylim(0, 3 * min(es["val_loss"]))
    ax.set_xlabel(f"epoch over the {TRAIN_EXAMPLES} training images (log scale)")
    ax.set_ylabel("validation cross-entropy loss")
    ax.set_title("Early stopping on validation loss: where it stopped, what it kept")
    ax.legend(fontsize=8)
    study.figure(fig, "early_stopping.png",
                 "Validation loss of the unregularised runs at their rate, and of the early "
                 "stopping runs at theirs (one line per seed): the kept checkpoint is the "
                 "minimum.")


# --- the report
def _setup(study, s, data) -> str:
    rates = "; ".join(f"{arm} {d['rate']:g}" + (" (at the sweep's edge)" if
                                                 data["sweeps"][arm]["at_edge"] else "")
                      for arm, d in data["regimes"].items())
    sizes = ", ".join(f"{n:,}" for n in s["sizes"])
    return (
        f"scikit-learn's digits: {TRAIN_EXAMPLES} training images (`dataset.train_examples`, "
        f"10 per class, the same 100 for every seed), the usual 180 validation and 360 test "
        f"images. An MLP of depth {s['depth']} and width {s['width']} (ReLU), Adam with the "
        f"shipped warmup-cosine schedule (50 warmup steps), batch {BATCH}, {s['steps']} steps "
        f"({s['steps'] * BATCH // TRAIN_EXAMPLES} epochs of {TRAIN_EXAMPLES} images), no label "
        f"smoothing, evaluated every {s['eval_every']} steps. Regimes: none; dropout {DROPOUT} "
        f"after "
        f"every hidden layer; AdamW with decoupled weight decay {WEIGHT_DECAY} (each step "
        f"shrinks the weights by lr x {WEIGHT_DECAY}); early stopping with patience {PATIENCE} "
        f"evaluations on the validation loss, which keeps the checkpoint with the lowest one. "
        f"**Each regime's learning rate** comes from its own sweep over "
        f"{', '.join(f'{r:g}' for r in s['rates'])}, {extending(s['extensions'])}: the rate "
        f"whose weights handed over have the lowest validation loss averaged over the seeds "
        f"(the final weights; for early stopping the kept checkpoint). The regimes are "
        f"compared on that same loss and on the test split, so a regime that only looked "
        f"better at a rate that suits it would be no finding. Rates: {rates}. "
        f"**Random labels** (Zhang et al. 2017): the same {TRAIN_EXAMPLES} images with their "
        f"labels permuted once (seed {SHUFFLE_SEED}; still 10 per class, read from an .npz by "
        f"the `arrays` dataset), trained as the unregularised regime, its rate swept over the "
        f"same rates but chosen by the final training loss, since a validation loss on random "
        f"labels cannot choose one; validation and test keep their true labels, so chance is "
        f"{CHANCE}. For the time to fit them, the true labels are trained at the same rate "
        f"too. **Training-set size**: {sizes} images "
        f"(stratified subsets; the larger ones contain more of the 1,257 training images, "
        f"drawn anew), regimes {' and '.join(s['size_regimes'])} at the rates tuned at "
        f"{TRAIN_EXAMPLES}, the same {s['steps']} steps (fewer epochs over more images). "
        f"The validation loss is monitored rather than the accuracy because it is where "
        f"memorisation shows: the accuracy of 180 images moves in steps of 0.6 % and plateaus, "
        f"so with patience it stops on noise. In probes (N = 100-200, width 512-1024) dropout "
        f"0.5 and weight decay 1 gave the lowest validation loss among dropout 0.2/0.5/0.7 and "
        f"weight decay 0.1/1/3/10 (10 underfits: training accuracy 0.98). "
        f"The **gap** is the validation loss minus the training loss of the weights a regime "
        f"hands over (the final ones; for early stopping, the checkpoint it kept), the training "
        f"loss evaluated on all training images with dropout off; the accuracy gap likewise. "
        f"Test metrics are those of the same weights. **Fitted at** is the first logged step "
        f"whose mini-batches since the previous record were all classified right. "
        f"\"A beats B\" only where a paired t-test over the seeds gives p < 0.05 (seed i "
        f"against seed i: the same initial weights and batch order), else a tie. Seeds "
        f"{', '.join(map(str, study.seeds))} change the initial weights, the batch order and "
        f"dropout.")


def _row(arm, d, rate="") -> list:
    return [arm, f"{d['examples']:,}", rate, f"{np.mean(d['train_loss']):.1e}",
            spread(d["train_accuracy"]), spread(d["val_loss"]), spread(d["val_accuracy"]),
            spread(d["loss_gap"]), _steps(d["stopped_step"]), _steps(d["kept_step"]),
            spread(d["test_loss"]), spread(d["test_accuracy"])]


def _tables(data) -> list[Table]:
    header = ["arm", "training images", "rate", "training loss (clean)", "training accuracy",
              "validation loss", "validation accuracy", "loss gap", "stopped at step",
              "test checkpoint", "test loss", "test accuracy"]
    regimes = [_row(arm, d, f"{d['rate']:g}" + (" (edge)" if data["sweeps"][arm]["at_edge"]
                                               else ""))
               for arm, d in data["regimes"].items()]
    sizes = [_row("no regularisation" if regime == "none" else regime, d,
                  f"{data['regimes'][regime]['rate']:g}")
             for regime, sized in data["sizes"].items() for d in sized.values()]
    fitted = data["fitted_at"]
    compared = [[key, f"{c['difference']:+.3g}", f"{c['p']:.2g}",
                 {"a": "the first is better", "b": "the second is better",
                  "tie": "tie"}[c["verdict"]]]
                for key, c in data["compared"].items()]
    sweeps = [[regime, "training loss" if regime == RANDOM else "validation loss",
               "; ".join(f"{lr}: {'diverged' if v is None else f'{v:.3f}'}"
                         for lr, v in sweep["rates"].items())]
              for regime, sweep in data["sweeps"].items()]
    return [
        Table("The weights each arm hands over: the final ones, or the checkpoint early "
              "stopping kept (mean (min-max) over seeds)", header, regimes),
        Table("Training-set size: the same steps on more images, at the rates tuned on "
              f"{TRAIN_EXAMPLES}", header, sizes),
        Table(f"When the labels were fitted, both at rate {fitted['rate']:g}: the first logged "
              f"step with every mini-batch since the previous record classified right",
              ["labels", "fitted at step", "epochs"],
              [[labels, _steps(fitted[key]),
                _steps([None if f is None else round(float(_epochs(f))) for f in fitted[key]])]
               for labels, key in (("true", "true"), ("shuffled", RANDOM))]),
        Table("Paired comparisons over the seeds (two-sided paired t-test; difference: first "
              "minus second, mean over seeds; lower is better except for accuracy)",
              ["first against the unregularised (or smaller) arm", "difference", "p",
               "verdict"], compared),
        Table("The rate sweeps: per rate, the mean over the seeds of what picks the rate (the "
              "validation loss of the weights handed over; for random labels the final "
              "training loss)", ["arm", "score", "rate: score"], sweeps)]


def _meaning(data) -> str:
    d = data["regimes"]
    none, shuffled = d["none"], d[RANDOM]
    test_acc = [np.mean(d[r]["test_accuracy"]) for r in REGIMES]
    sizes = data["sizes"]["none"]
    largest = max(sizes, key=int)
    rise = np.mean(none["val_loss"]) / np.mean(none["min_val_loss"]) - 1
    narrowed = [r for r in REGIMES[1:] if data["compared"][f"{r} gap"]["verdict"] == "a"]
    calmer = [r for r in REGIMES[1:] if data["compared"][f"{r} test loss"]["verdict"] == "a"]
    return (
        f"Memorisation is real and it does not need a pattern: the unregularised net fits "
        f"{TRAIN_EXAMPLES} shuffled labels as completely as the true ones (training accuracy "
        f"{np.mean(shuffled['train_accuracy']):.2f}), and with them its validation accuracy is "
        f"{np.mean(shuffled['val_accuracy']):.2f}, chance. Fitting the training set therefore "
        f"says nothing about generalising; what the net does with true labels beyond fitting "
        f"them comes from the structure of the images. With true labels, at its tuned rate, "
        f"its validation loss ends {rise:.0%} above its minimum. "
        f"{_capitalised(_listed(narrowed) or 'no regulariser')} narrowed that loss gap beyond "
        f"the seeds' spread, and {_listed(calmer) or 'none'} lowered the test loss. But "
        f"'prevented' is too strong. No regime stops the net from fitting its training images, "
        f"and test accuracy is {min(test_acc):.3f}-{max(test_acc):.3f} across the four regimes, "
        f"a difference of {round((max(test_acc) - min(test_acc)) * 360)} of the 360 test "
        f"images. More data does what the regularisers do not: with {int(largest):,} images "
        f"instead of {TRAIN_EXAMPLES} the gap falls from {np.mean(none['loss_gap']):.2f} to "
        f"{np.mean(sizes[largest]['loss_gap']):.2f} and test accuracy rises from "
        f"{np.mean(none['test_accuracy']):.3f} to {np.mean(sizes[largest]['test_accuracy']):.3f}."
        f" With {TRAIN_EXAMPLES} examples, how well a net generalises is bounded by the data; "
        f"here regularisation bought calibration more than accuracy.")


def _literature(data, s) -> list[Cited]:
    d = data["regimes"]
    shuffled, none, dropout = d[RANDOM], d["none"], d["dropout"]
    fitted = data["fitted_at"]
    both = [(t, r) for t, r in zip(fitted["true"], fitted[RANDOM]) if t and r]
    ratio = f" ({np.mean([r / t for t, r in both]):.1f} times as many steps)" if both else ""
    memorised = min(shuffled["train_accuracy"]) == 1.0
    slower = bool(both) and len(both) == len(fitted[RANDOM])
    es = data["compared"]["early stopping test loss"]
    rows = [
        Cited("Zhang et al. 2017",
              "convolutional nets fit CIFAR-10 (50,000 images) with random labels to zero "
              "training error, so at chance on test; training time increases only by a small "
              "constant factor over true labels",
              f"{TRAIN_EXAMPLES} shuffled digit labels: training accuracy "
              f"{spread(shuffled['train_accuracy'])}, training loss "
              f"{np.mean(shuffled['train_loss']):.0e}, validation accuracy "
              f"{spread(shuffled['val_accuracy'])}; fitted at step {_steps(fitted[RANDOM])} "
              f"against {_steps(fitted['true'])} for the true labels at the same rate{ratio}",
              ("agrees" if memorised and slower else "disagrees: not every seed fitted them")
              + f", on {TRAIN_EXAMPLES} 8x8 digits and an MLP rather than CIFAR-10 and "
              f"convolutional nets"),
        Cited("Srivastava et al. 2014",
              "on all of MNIST, test error 1.60 % for a standard net (2x800, Simard et al. "
              "2003) against 1.25 % for a 3x1024 ReLU net with dropout (1.06 % with max-norm)",
              f"dropout {DROPOUT} on {TRAIN_EXAMPLES} digits: test accuracy "
              f"{spread(dropout['test_accuracy'])} against {spread(none['test_accuracy'])}",
              f"not comparable: 60,000 training images, not {TRAIN_EXAMPLES}"),
    ]
    sized = {n: data["compared"].get(f"dropout test accuracy at {n} examples")
             for n in data["sizes"].get("dropout", {})}
    if not sized:  # the size sweep ran without dropout: its data-size row has nothing to face
        sized = {str(TRAIN_EXAMPLES): data["compared"]["dropout test accuracy"]}
    words = {"a": "dropout better", "b": "dropout worse", "tie": "a tie"}
    ours = "; ".join(f"{int(n):,} images: {words[c['verdict']]} (p = {c['p']:.2g})"
                     for n, c in sized.items())
    at_smallest = sized[min(sized, key=int)]["verdict"]
    larger = [n for n in sized if int(n) > TRAIN_EXAMPLES]
    worse = [f"{int(n):,}" for n in larger if sized[n]["verdict"] == "b"]
    largest = max(sized, key=int)
    fit = {regime: np.mean(data["sizes"][regime][largest]["train_accuracy"])
           for regime in ("dropout", "none")} if larger else {}
    rows.append(Cited(
        "Srivastava et al. 2014, effect of data-set size",
        "on MNIST subsets, dropout gives no improvement with 100 or 500 training examples; "
        "its gain grows with the data set up to a point, then declines",
        f"test accuracy, dropout against none: {ours}",
        ("agrees" if at_smallest == "tie" else "disagrees") + f" at {TRAIN_EXAMPLES} images"
        + (f"; disagrees at {' and '.join(worse)} images, where dropout is worse, though here "
           f"every size gets the same {s['steps']} steps at the rate tuned on "
           f"{TRAIN_EXAMPLES} (training accuracy at {int(largest):,} images "
           f"{fit['dropout']:.3f} with dropout, {fit['none']:.3f} without)"
           if worse else "") + "; a different net, dropout rate and training"))
    rows.append(Cited(
        "Prechelt 1998",
        "over 12 problems, slower early-stopping criteria improve generalisation by about 4 % "
        "on average at about 4 times the training time",
        f"patience {PATIENCE}: stopped at step {_steps(d['early stopping']['stopped_step'])} of "
        f"{s['steps']}; test loss {spread(d['early stopping']['test_loss'])} against "
        f"{spread(none['test_loss'])} for training to the end ("
        + {"a": "lower", "b": "higher", "tie": "a tie"}[es["verdict"]] + f", p = {es['p']:.2g})",
        "not comparable: he compares stopping criteria with each other on small nets, not "
        "early stopping against training to the end"))
    return rows


def _listed(names) -> str:
    """'a, b and c'."""
    names = list(names)
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + (names[-1] if names
                                                                          else "")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
