"""Overfitting: a large MLP memorises 100 digits; do dropout, weight decay and early stopping
keep it from doing so?

A wide MLP is trained on a stratified subset of 100 of scikit-learn's digits (10 per class)
until it fits them perfectly, alone, with dropout, with decoupled weight decay (AdamW) and with
early stopping on the validation loss. The gap is measured on the weights each run hands over:
the loss on the whole training subset, evaluated with dropout off, against the validation loss.

Larger, on an accelerator: the same regimes on 1,000 MNIST images with a wider net.
"""
import numpy as np

from experiments import run as run_api
from experiments.studies.common import Table, band, new_figure, on_grid, spread

TITLE = "Overfitting and regularisation"
CLAIM = ("Networks can memorise rather than generalise; this is prevented through "
         "regularisation, dropout and early stopping.")
SEEDS = 3

TRAIN_EXAMPLES, BATCH, LR, EVAL_EVERY = 100, 32, 1e-3, 12
DROPOUT, WEIGHT_DECAY, PATIENCE = 0.5, 1.0, 5
REGIMES = ("none", "dropout", "weight decay", "early stopping")
COLORS = {"none": "tab:red", "dropout": "tab:blue", "weight decay": "tab:green",
          "early stopping": "tab:purple"}


def settings(quick: bool) -> dict:
    if quick:  # the same experiment on a smaller net for fewer steps: seconds, not minutes
        return dict(width=512, depth=2, steps=400)
    return dict(width=1024, depth=3, steps=1200)


def run(study) -> dict:
    s = settings(study.quick)
    study.plan(len(study.seeds) * len(REGIMES))
    runs = {regime: study.train_seeds(regime.replace(" ", "_"),
                                      lambda seed: _config(study, s, regime, seed))
            for regime in REGIMES}
    data = {"steps": s["steps"], "width": s["width"], "depth": s["depth"],
            "regimes": {regime: _summary(rs) for regime, rs in runs.items()}}
    _plot_curves(study, runs, s)
    _plot_gaps(study, data)
    _plot_early_stopping(study, runs, data, s)

    d = data["regimes"]
    none, drop, wd, es = (d[r] for r in REGIMES)
    finding = (
        f"Trained on {TRAIN_EXAMPLES} digits until it fits them (training loss "
        f"{np.mean(none['train_loss']):.0e}, training accuracy "
        f"{np.mean(none['train_accuracy']):.2f}), the unregularised {s['depth']}x{s['width']} MLP "
        f"ends {spread(none['loss_gap'])} higher in validation than in training loss; dropout "
        f"{DROPOUT} {_changes(drop['loss_gap'], none['loss_gap'])} the gap to "
        f"{spread(drop['loss_gap'])} and weight decay {WEIGHT_DECAY} (AdamW) "
        f"{_changes(wd['loss_gap'], none['loss_gap'])} it to {spread(wd['loss_gap'])}, and early "
        f"stopping on validation loss stopped at step {_steps(es['stopped_step'])} of "
        f"{s['steps']}, keeping step {_steps(es['kept_step'])}, whose test loss "
        f"{spread(es['test_loss'])} "
        f"{'beats' if np.mean(es['test_loss']) < np.mean(none['test_loss']) else 'does not beat'}"
        f" the unregularised last step's {spread(none['test_loss'])} (test accuracy "
        f"{spread(es['test_accuracy'])} against {spread(none['test_accuracy'])}).")
    return {"finding": finding, "setup": _setup(study, s), "tables": _tables(data),
            "meaning": _meaning(data), "data": data}


def _config(study, s, regime, seed):
    overrides = {
        "seed": seed, "dataset.train_examples": TRAIN_EXAMPLES, "dataset.batch_size": BATCH,
        "model.width": s["width"], "model.depth": s["depth"], "model.dropout": 0.0,
        "loss.label_smoothing": 0.0, "optimizer.name": "adam", "optimizer.learning_rate": LR,
        "optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 50,
        "steps": s["steps"], "eval_every": EVAL_EVERY, "log_every": EVAL_EVERY,
        # one checkpoint, the last: the test metrics are then those of the final weights
        "checkpoint.every": s["steps"], "early_stopping.monitor": "eval_loss"}
    if regime == "dropout":
        overrides["model.dropout"] = DROPOUT
    elif regime == "weight decay":
        overrides.update({"optimizer.name": "adamw", "optimizer.weight_decay": WEIGHT_DECAY})
    elif regime == "early stopping":  # a checkpoint at every evaluation, so the best is kept
        overrides.update({"early_stopping.patience": PATIENCE, "checkpoint.every": 0})
    return study.config("digits_mlp.py", **overrides)


def _clean_train_metrics(r) -> dict:
    """Loss and accuracy of the run's final weights on its whole training subset, dropout off:
    the logged training loss is an average over mini-batches with dropout on."""
    _, dataset = run_api.build(r.config)
    batches = dataset.eval_batches("train", r.config.dataset.eval_batch_size)
    return r.summary["trainer"].evaluate(r.summary["state"], batches)


def _delivered(r) -> tuple[dict, float, float]:
    """The clean training metrics, validation loss and accuracy of the weights a run hands
    over: its final ones, or for early stopping the checkpoint it kept."""
    steps = list(r.curve("eval_loss")[0])
    kept = r.test["step"]
    if kept == int(r.summary["state"].step):
        return _clean_train_metrics(r), r.last("eval_loss"), r.last("eval_accuracy")
    at = steps.index(kept)
    return (run_api.evaluate(r.workdir, "best", "train"), float(r.curve("eval_loss")[1][at]),
            float(r.curve("eval_accuracy")[1][at]))


def _summary(rs) -> dict:
    delivered = [_delivered(r) for r in rs]
    train = [t for t, _, _ in delivered]
    val_loss = [v for _, v, _ in delivered]
    val_acc = [a for _, _, a in delivered]
    return {
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


def _changes(values, reference) -> str:
    return "shrinks" if np.mean(values) < np.mean(reference) else "does not shrink (widens)"


def _steps(values) -> str:
    v = np.asarray(values)
    return f"{v.mean():.0f}" + (f" ({v.min()}-{v.max()})" if len(v) > 1 else "")


def _plot_curves(study, runs, s):
    per_epoch = TRAIN_EXAMPLES // BATCH
    grid = np.arange(EVAL_EVERY, s["steps"] + 1, EVAL_EVERY)
    fig, axes = new_figure(3, 1, width=4.2, height=3.8)
    panels = (("train_loss", "training loss (log scale)", "Training loss: memorised"),
              ("eval_loss", "validation loss", "Validation loss: rises again"),
              ("eval_accuracy", "validation accuracy", "Validation accuracy: flat"))
    for ax, (key, label, title) in zip(axes[0], panels):
        for regime in ("none", "dropout", "weight decay"):
            band(ax, grid / per_epoch, on_grid(runs[regime], key, grid), regime, COLORS[regime])
        ax.set_xscale("log")
        ax.set_xlabel(f"epoch over the {TRAIN_EXAMPLES} training images (log scale)")
        ax.set_ylabel(label)
        ax.set_title(title)
    axes[0, 0].set_yscale("log")
    low = min(float(np.nanmin(on_grid(runs[r], "eval_loss", grid))) for r in runs)
    axes[0, 1].set_ylim(0.8 * low, 3 * low)
    axes[0, 2].set_ylim(0.8, 1.0)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"A {s['depth']}x{s['width']} MLP on {TRAIN_EXAMPLES} digits, cross-entropy "
                 f"(mean and min-max over seeds)")
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
    fig.suptitle("The train/validation gap of the weights each regime hands over")
    study.figure(fig, "gaps.png",
                 "The gap of the final weights (early stopping: of the checkpoint it kept), the "
                 "training split evaluated with dropout off.")


def _plot_early_stopping(study, runs, data, s):
    per_epoch = TRAIN_EXAMPLES // BATCH
    grid = np.arange(EVAL_EVERY, s["steps"] + 1, EVAL_EVERY)
    fig, axes = new_figure(1, 1, width=6.4, height=4.0)
    ax = axes[0, 0]
    band(ax, grid / per_epoch, on_grid(runs["none"], "eval_loss", grid),
         "no regularisation, trained to the end", COLORS["none"])
    es = data["regimes"]["early stopping"]
    for i, r in enumerate(runs["early stopping"]):
        steps, loss = r.curve("eval_loss")
        ax.plot(steps / per_epoch, loss, color=COLORS["early stopping"], lw=1.2, ls="--",
                label="early stopping: validation loss until the stop" if i == 0 else None)
        kept = es["kept_step"][i]
        ax.plot(kept / per_epoch, loss[list(steps).index(kept)], "o",
                color=COLORS["early stopping"], label="checkpoint kept" if i == 0 else None)
        ax.axvline(es["stopped_step"][i] / per_epoch, color=COLORS["early stopping"], lw=0.8,
                   ls=":", label=f"stopped ({PATIENCE} evaluations without improvement)"
                   if i == 0 else None)
    ax.set_xscale("log")
    ax.set_ylim(0, 3 * min(es["val_loss"]))
    ax.set_xlabel(f"epoch over the {TRAIN_EXAMPLES} training images (log scale)")
    ax.set_ylabel("validation cross-entropy loss")
    ax.set_title("Early stopping on validation loss: where it stopped, what it kept")
    ax.legend(fontsize=8)
    study.figure(fig, "early_stopping.png",
                 "Validation loss of the unregularised runs, and of the same runs with early "
                 "stopping (one line per seed): the kept checkpoint is the minimum.")


def _setup(study, s) -> str:
    return (
        f"scikit-learn's digits: {TRAIN_EXAMPLES} training images (`dataset.train_examples`, "
        f"10 per class), the usual 180 validation and 360 test images. An MLP of depth "
        f"{s['depth']} and width {s['width']} (ReLU), Adam at {LR} with the shipped warmup-cosine "
        f"schedule (50 warmup steps), batch {BATCH}, {s['steps']} steps "
        f"({s['steps'] * BATCH // TRAIN_EXAMPLES} epochs), no label smoothing, evaluated every "
        f"{EVAL_EVERY} steps. Regimes: none; dropout {DROPOUT} after every hidden layer; AdamW "
        f"with decoupled weight decay {WEIGHT_DECAY} (each step shrinks the weights by lr x "
        f"{WEIGHT_DECAY}); early stopping with patience {PATIENCE} evaluations on the validation "
        f"loss, which keeps the checkpoint with the lowest one. The validation loss is monitored "
        f"rather than the accuracy because it is where memorisation shows: the accuracy of 180 "
        f"images moves in steps of 0.6 % and plateaus, so with patience it stops on noise. "
        f"In probes (N = 100-200, width 512-1024) dropout 0.5 and weight decay 1 gave the lowest "
        f"validation loss among dropout 0.2/0.5/0.7 and weight decay 0.1/1/3/10 (10 underfits: "
        f"training accuracy 0.98); a constant learning rate instead of the cosine schedule made "
        f"the final losses noisier without changing the picture. "
        f"The **gap** is the validation loss minus the training loss of the weights a regime "
        f"hands over (the final ones; for early stopping, the checkpoint it kept), the training "
        f"loss evaluated on all "
        f"{TRAIN_EXAMPLES} training images with dropout off; the accuracy gap likewise. Test "
        f"metrics are those of the final weights (the only checkpoint these runs keep), and for "
        f"early stopping those of the checkpoint it kept. Seeds "
        f"{', '.join(map(str, study.seeds))} change the initial weights, the batch order and "
        f"dropout; the 100 training images are the same.")


def _tables(data) -> list[Table]:
    rows = []
    for regime, d in data["regimes"].items():
        rows.append([regime, f"{np.mean(d['train_loss']):.1e}", spread(d["val_loss"]),
                     spread(d["loss_gap"]), spread(d["accuracy_gap"]),
                     _steps(d["stopped_step"]), _steps(d["kept_step"]),
                     spread(d["test_loss"]), spread(d["test_accuracy"])])
    return [Table("The weights each regime hands over: the final ones, or the checkpoint early "
                  "stopping kept (mean (min-max) over seeds)",
                  ["regime", "training loss (clean)", "validation loss", "loss gap",
                   "accuracy gap", "stopped at step", "test checkpoint", "test loss",
                   "test accuracy"], rows)]


def _meaning(data) -> str:
    d = data["regimes"]
    none = d["none"]
    mean = {r: {k: float(np.mean(v)) for k, v in d[r].items()} for r in REGIMES}
    narrower = [r for r in REGIMES[1:] if mean[r]["loss_gap"] < mean["none"]["loss_gap"]]
    calmer = [r for r in REGIMES[1:] if mean[r]["test_loss"] < mean["none"]["test_loss"]]
    test_acc = [mean[r]["test_accuracy"] for r in REGIMES]
    train_acc = min(mean[r]["train_accuracy"] for r in REGIMES)
    rise = mean["none"]["val_loss"] / mean["none"]["min_val_loss"] - 1
    return (
        f"Memorisation is real and fast: every regime ends fitting "
        f"{'all' if train_acc == 1 else f'at least {train_acc:.0%} of'} its {TRAIN_EXAMPLES} "
        f"training images, and without regularisation the "
        f"validation loss ends {rise:.0%} above its minimum ({spread(none['min_val_loss'])} -> "
        f"{spread(none['val_loss'])}) as the net grows more confident on the images it gets "
        f"wrong. "
        f"{_capitalised(_listed(narrower) or 'no regulariser')} narrowed that loss gap, and "
        f"{_listed(calmer) or 'none'} lowered the test loss (predictions on unseen images that "
        f"are less overconfident). But 'prevented' is too strong. No regime stops the net from "
        f"fitting its training images, and the accuracy barely moves: test accuracy is "
        f"{min(test_acc):.3f}-{max(test_acc):.3f} across the four regimes, a difference of "
        f"{round((max(test_acc) - min(test_acc)) * 360)} of the 360 test images, and early "
        f"stopping's checkpoint, the best by validation loss, tests at "
        f"{mean['early stopping']['test_accuracy']:.3f} against "
        f"{mean['none']['test_accuracy']:.3f} for the last step. With {TRAIN_EXAMPLES} "
        f"examples, how well a net generalises is bounded by the data; here regularisation "
        f"bought calibration more than accuracy.")


def _listed(names) -> str:
    """'a, b and c'."""
    names = list(names)
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + (names[-1] if names
                                                                          else "")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
