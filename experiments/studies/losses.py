"""Loss functions: the article's binary cross-entropy, cross-entropy against MSE on the same
classifier, and MSE for regression.

The toolkit's `sigmoid_binary_cross_entropy` is checked against the article's formula in
float64 over a grid of probabilities. The digits MLP is then trained with cross-entropy and with
MSE (its raw outputs regressed onto one-hot targets) by plain SGD over a sweep of learning
rates, and by Adam; and an MLP is trained on MSE to predict diabetes progression.
"""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import run as run_api
from experiments.studies.common import Table, band, new_figure, on_grid, spread
from train import losses

TITLE = "Loss functions: cross-entropy and MSE"
CLAIM = ("Binary cross-entropy, -[y log p + (1 - y) log(1 - p)], is high when the prediction "
         "is wrong and near zero when it is right and confident: the loss for classification; "
         "mean squared error is the loss for regression.")
SEEDS = 3

TARGETS = (0.90, 0.95)  # validation accuracies whose first step is measured
SHOWN_TARGET = 0.95
COLORS = {"cross_entropy": "tab:blue", "mse": "tab:orange"}
NAMES = {"cross_entropy": "cross-entropy", "mse": "MSE on one-hot targets"}
WIDTH, DEPTH, BATCH, EVAL_EVERY = 512, 2, 32, 5
WINDOW = 3  # evaluations averaged when finding the step a target accuracy is reached


def settings(quick: bool) -> dict:
    if quick:  # each loss at the best plain-SGD rate of the default sweep; no Adam
        return dict(sgd={"cross_entropy": (0.3,), "mse": (1.0,)}, adam={}, steps=200,
                    regression_models=(("MLP", 1, 32, 0.01),), regression_steps=300)
    rates = (0.03, 0.1, 0.3, 1.0, 3.0)
    return dict(sgd={"cross_entropy": rates, "mse": rates},
                adam={"cross_entropy": (3e-4, 1e-3, 3e-3), "mse": (3e-4, 1e-3, 3e-3)},
                steps=300, regression_models=(("linear", 0, 1, 0.3), ("MLP", 1, 32, 0.01)),
                regression_steps=900)


def run(study) -> dict:
    s = settings(study.quick)
    sweeps = [(opt, loss, lr) for opt in ("sgd", "adam") for loss, rates in s[opt].items()
              for lr in rates]
    study.plan(len(study.seeds) * (len(sweeps) + len(s["regression_models"])))
    bce, curves = _binary_cross_entropy_check()

    runs = {}  # each (optimizer, loss) with all its rates and seeds as one program
    for opt, loss in dict.fromkeys(key[:2] for key in sweeps):
        group = [(lr, seed) for key_opt, key_loss, lr in sweeps
                 if (key_opt, key_loss) == (opt, loss) for seed in study.seeds]
        trained = study.train_group(
            [f"{opt}-{loss}-lr{lr:g}-seed{seed}" for lr, seed in group],
            [_classifier_config(study, opt, loss, lr, s["steps"], seed) for lr, seed in group],
            test=False)
        for (lr, _), r in zip(group, trained):
            runs.setdefault((opt, loss, lr), []).append(r)
    classifier = [_classifier_summary(key, rs) for key, rs in runs.items()]
    best = {opt: {loss: _best(classifier, opt, loss) for loss in s[opt]} for opt in s
            if opt in ("sgd", "adam") and s[opt]}

    regression_runs = {name: study.train_seeds(
        f"diabetes-{name}",
        lambda seed: _regression_config(study, depth, width, lr, s["regression_steps"], seed))
        for name, depth, width, lr in s["regression_models"]}
    regression = _regression_summary(regression_runs)

    data = {"bce": bce, "classifier": classifier, "best": best, "regression": regression,
            "steps": s["steps"]}
    _plot_bce(study, curves)
    _plot_classifier(study, data, runs, s)
    _plot_regression(study, regression_runs, regression)

    mlp = regression["models"]["MLP"]
    finding = (
        f"The toolkit's binary cross-entropy equals the article's formula to a relative "
        f"{bce['max_relative_error']:.0e} (float64): {bce['right_confident']:.3f} when the true "
        f"class gets p = 0.99, {bce['wrong_confident']:.2f} when it gets p = 0.01; on the digits "
        f"MLP, each loss at its best rate, {_race(best['sgd'])} under plain SGD"
        + (f", and {_race(best['adam'])} under Adam" if "adam" in best else "")
        + f"; on diabetes, an MLP trained on MSE reaches test MSE {_whole(mlp['test_mse'])} "
          f"(R² {spread(mlp['r2'])}) against {regression['mean_predictor_mse']:.0f} for "
          f"predicting the mean.")
    return {"finding": finding, "setup": _setup(study, s), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "", "data": data}


# --- the formula
def _binary_cross_entropy_check() -> tuple[dict, dict]:
    """The toolkit's loss on logits log(p / (1 - p)) against -[y log p + (1-y) log(1-p)]:
    the numbers, and the curves to draw."""
    p = np.linspace(0.001, 0.999, 999)
    formula = {y: -(y * np.log(p) + (1 - y) * np.log1p(-p)) for y in (0, 1)}
    with jax.enable_x64(True):
        logits = jnp.asarray(np.log(p) - np.log1p(-p), jnp.float64)[:, None]
        toolkit = {y: np.asarray(losses.sigmoid_binary_cross_entropy(
            logits, jnp.full_like(logits, y))) for y in (0, 1)}
        # how hard each loss pushes the logit: BCE, and squared error on the probability
        bce_grad = jax.vmap(jax.grad(lambda z: losses.sigmoid_binary_cross_entropy(
            z[None], jnp.ones(1))))(logits[:, 0])
        squared_grad = jax.vmap(jax.grad(lambda z: losses.mean_squared_error(
            jax.nn.sigmoid(z)[None], jnp.ones(1))))(logits[:, 0])
    relative = max(float(np.max(np.abs(toolkit[y] - formula[y]) / formula[y])) for y in (0, 1))
    at = {q: int(np.argmin(np.abs(p - q))) for q in (0.01, 0.5, 0.99)}
    numbers = {"max_relative_error": relative, "unsure": float(toolkit[1][at[0.5]]),
               "right_confident": float(toolkit[1][at[0.99]]),  # y = 1, p = 0.99
               "wrong_confident": float(toolkit[1][at[0.01]])}  # y = 1, p = 0.01
    return numbers, {"p": p, "formula": formula, "toolkit": toolkit,
                     "bce_grad": np.asarray(bce_grad), "squared_grad": np.asarray(squared_grad)}


# --- the classifier
def _classifier_config(study, optimizer, loss, lr, steps, seed):
    return study.config("digits_mlp.py", **{
        "seed": seed, "model.width": WIDTH, "model.depth": DEPTH, "model.dropout": 0.0,
        "loss.name": loss, "loss.label_smoothing": 0.0, "optimizer.name": optimizer,
        "optimizer.momentum": 0.0, "optimizer.learning_rate": lr,
        "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
        "dataset.batch_size": BATCH, "steps": steps, "eval_every": EVAL_EVERY, "log_every": 25,
        "checkpoint.every": steps})


def _first_step_at(r, target: float):
    """The first step at which the validation accuracy, averaged over the last WINDOW
    evaluations, reaches `target`: one lucky evaluation of 180 images does not count."""
    steps, accuracy = r.curve("eval_accuracy")
    if r.diverged or len(accuracy) < WINDOW:
        return None
    smoothed = np.convolve(accuracy, np.ones(WINDOW) / WINDOW, mode="valid")
    reached = np.flatnonzero(smoothed >= target)
    return int(steps[WINDOW - 1 + reached[0]]) if len(reached) else None


def _classifier_summary(key, rs) -> dict:
    optimizer, loss, lr = key
    return {"optimizer": optimizer, "loss": loss, "lr": lr,
            "steps_to": {f"{t:.2f}": [_first_step_at(r, t) for r in rs] for t in TARGETS},
            "final_val_accuracy": [0.0 if r.diverged else r.last("eval_accuracy") for r in rs],
            "diverged": [bool(r.diverged) for r in rs]}


def _best(classifier, optimizer, loss) -> dict:
    """The rate whose seeds all reach the shown target, soonest on average; if there is none,
    the one with the best final accuracy."""
    candidates = [c for c in classifier if c["optimizer"] == optimizer and c["loss"] == loss]
    return min(candidates, key=lambda c: (_mean_steps(c), -np.mean(c["final_val_accuracy"])))


def _mean_steps(c) -> float:
    """Mean steps to the shown target over seeds; infinite if a seed never got there."""
    values = c["steps_to"][f"{SHOWN_TARGET:.2f}"]
    return np.inf if None in values else float(np.mean(values))


def _race(best) -> str:
    """'MSE reaches 95% validation accuracy first (72 steps for cross-entropy at lr 0.003, 53
    for MSE at lr 0.003)'."""
    ce, mse, key = best["cross_entropy"], best["mse"], f"{SHOWN_TARGET:.2f}"
    first = ("cross-entropy" if _mean_steps(ce) < _mean_steps(mse) else
             "MSE" if _mean_steps(mse) < _mean_steps(ce) else "neither")
    return (f"{first} reaches {SHOWN_TARGET:.0%} validation accuracy first "
            f"({_steps(ce['steps_to'][key])} steps for cross-entropy "
            f"at lr {ce['lr']:g}, {_steps(mse['steps_to'][key])} for MSE at lr {mse['lr']:g})")


def _steps(values) -> str:
    if None in values:
        hit = [v for v in values if v is not None]
        return f"never ({len(values) - len(hit)} of {len(values)} seeds)" if not hit else (
            f"{np.mean(hit):.0f} ({len(values) - len(hit)} of {len(values)} seeds never)")
    v = np.asarray(values)
    return f"{v.mean():.0f}" + (f" ({v.min()}-{v.max()})" if len(v) > 1 else "")


# --- regression
def _whole(values) -> str:
    """'3641 (3376-3469)': mean and min-max over seeds, in whole units of the target."""
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.0f}" + (f" ({v.min():.0f}-{v.max():.0f})" if len(v) > 1 else "")


def _regression_config(study, depth, width, lr, steps, seed):
    return study.config("diabetes_mlp.py", **{
        "seed": seed, "model.depth": depth, "model.width": width,
        "optimizer.learning_rate": lr, "steps": steps,
        "checkpoint.every": steps})  # one checkpoint: the test is of the final weights


def _regression_summary(regression_runs) -> dict:
    _, dataset = run_api.build(next(iter(regression_runs.values()))[0].config)
    train, test = dataset.splits["train"]["targets"], dataset.splits["test"]["targets"]
    mean_mse = float(np.mean((test - train.mean()) ** 2))
    models = {name: {"test_mse": [r.test["loss"] for r in rs],
                     "test_mae": [r.test["mae"] for r in rs],
                     "r2": [float(1 - r.test["loss"] / np.var(test)) for r in rs]}
              for name, rs in regression_runs.items()}
    return {"mean_predictor_mse": mean_mse, "test_target_variance": float(np.var(test)),
            "models": models}


# --- figures
def _plot_bce(study, bce):
    p = bce["p"]
    fig, axes = new_figure(2, 1, width=4.8, height=3.8)
    ax = axes[0, 0]
    for y, color in ((1, "tab:blue"), (0, "tab:red")):
        ax.plot(p, bce["formula"][y], color=color, label=f"formula, y = {y}")
        ax.plot(p[::50], bce["toolkit"][y][::50], "o", color=color, markersize=4,
                mfc="none", label=f"toolkit's loss, y = {y}")
    ax.set_yscale("log")
    ax.set_xlabel("predicted probability p of class 1")
    ax.set_ylabel("binary cross-entropy (nats, log scale)")
    ax.set_title("-[y log p + (1-y) log(1-p)]")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.plot(p, np.abs(bce["bce_grad"]), color="tab:blue", label="binary cross-entropy")
    ax.plot(p, np.abs(bce["squared_grad"]), color="tab:orange",
            label="squared error (p - y)², p = sigmoid(logit)")
    ax.set_yscale("log")
    ax.set_xlabel("predicted probability p of the true class (y = 1)")
    ax.set_ylabel("|d loss / d logit| (log scale)")
    ax.set_title("How hard each loss pushes a wrong answer")
    ax.legend(fontsize=8)
    fig.suptitle("Binary cross-entropy: high when wrong, near zero when right and confident")
    study.figure(fig, "binary_cross_entropy.png",
                 "Left: the article's formula (lines) and the toolkit's loss (circles) for y = 1 "
                 "and y = 0. Right: the gradient each loss sends to the logit when the true "
                 "class gets probability p; squared error on a sigmoid output fades as the "
                 "prediction becomes confidently wrong, cross-entropy does not.")


def _plot_classifier(study, data, runs, s):
    optimizers = [o for o in ("sgd", "adam") if o in data["best"]]
    fig, axes = new_figure(1 + len(optimizers), 1, width=4.5, height=3.8)
    ax, key = axes[0, 0], f"{SHOWN_TARGET:.2f}"
    for loss in COLORS:
        rows = [c for c in data["classifier"] if c["optimizer"] == "sgd" and c["loss"] == loss]
        # a rate at which some seed never got there has no mean: it is marked above the budget
        ys = np.array([[np.nan] * len(c["steps_to"][key]) if None in c["steps_to"][key]
                       else c["steps_to"][key] for c in rows], dtype=float).T
        band(ax, [c["lr"] for c in rows], ys, NAMES[loss], COLORS[loss], marker="o")
        never = [c["lr"] for c in rows if None in c["steps_to"][key]]
        ax.plot(never, [s["steps"] * 1.05] * len(never), "x", color=COLORS[loss],
                label=f"{NAMES[loss]}: not every seed in {s['steps']} steps")
    ax.set_xscale("log")
    ax.set_ylim(0, s["steps"] * 1.12)
    ax.set_xlabel("learning rate (plain SGD)")
    ax.set_ylabel(f"steps to {SHOWN_TARGET:.0%} validation accuracy")
    ax.set_title("Speed against learning rate")
    ax.legend(fontsize=7, loc="lower left")
    grid = np.arange(EVAL_EVERY, s["steps"] + 1, EVAL_EVERY)
    for ax, opt in zip(axes[0, 1:], optimizers):
        for loss, best in data["best"][opt].items():
            band(ax, grid, on_grid(runs[opt, loss, best["lr"]], "eval_accuracy", grid),
                 f"{NAMES[loss]}, lr {best['lr']:g}", COLORS[loss])
        ax.axhline(SHOWN_TARGET, color="gray", lw=0.8, ls=":")
        ax.set_ylim(0.8, 1.0)
        ax.set_xlabel("training step (batch 32)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{'plain SGD' if opt == 'sgd' else 'Adam'}, each at its best rate")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Cross-entropy against MSE on the same {DEPTH}x{WIDTH} digits MLP (mean and "
                 f"min-max over seeds)")
    study.figure(fig, "cross_entropy_vs_mse.png",
                 f"Steps to {SHOWN_TARGET:.0%} validation accuracy (averaged over {WINDOW} "
                 f"evaluations) for each learning rate, a cross where not every seed got there "
                 f"(or it diverged), and the learning curves at each loss's best rate.")


def _plot_regression(study, regression_runs, regression):
    fig, axes = new_figure(2, 1, width=4.6, height=3.8)
    ax = axes[0, 0]
    styles = {"MLP": "tab:green", "linear": "tab:gray"}
    for name, rs in regression_runs.items():
        grid = np.unique(np.concatenate([r.curve("eval_loss")[0] for r in rs]))
        band(ax, grid, on_grid(rs, "train_loss", grid), f"{name}: training (mini-batches)",
             styles[name], "--")
        band(ax, grid, on_grid(rs, "eval_loss", grid), f"{name}: validation", styles[name])
    ax.axhline(regression["mean_predictor_mse"], color="k", lw=0.8, ls=":",
               label="predicting the training mean (test)")
    ax.set_yscale("log")
    ax.set_xlabel("training step (batch 32)")
    ax.set_ylabel("mean squared error (log scale)")
    ax.set_title("MSE while training")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    restored = run_api.restore(regression_runs["MLP"][0].workdir)
    test = restored.dataset.splits["test"]
    predicted = run_api.predict(restored, test["inputs"])[:, 0]
    ax.plot(test["targets"][:, 0], predicted, ".", color=styles["MLP"], alpha=0.7)
    low, high = float(test["targets"].min()), float(test["targets"].max())
    ax.plot([low, high], [low, high], "k:", lw=0.8, label="perfect prediction")
    ax.set_xlabel("true progression after one year (test patients)")
    ax.set_ylabel("the MLP's prediction")
    ax.set_title(f"Test set, seed {study.seeds[0]}")
    ax.legend(fontsize=8)
    fig.suptitle("Regression on diabetes with mean squared error")
    study.figure(fig, "regression.png",
                 "Left: training and validation MSE of the diabetes MLP (and a linear model), "
                 "against predicting the mean. Right: its test predictions against the truth.")


# --- text
def _setup(study, s) -> str:
    sgd = ", ".join(f"{lr:g}" for lr in s["sgd"]["cross_entropy"])
    adam = ", ".join(f"{lr:g}" for lr in s["adam"].get("cross_entropy", ()))
    return (
        f"**Formula.** For 999 values of p in [0.001, 0.999], the toolkit's "
        f"`train.losses.sigmoid_binary_cross_entropy` of the logit log(p/(1-p)) against "
        f"-[y log p + (1-y) log(1-p)], in float64, for y = 1 and 0; the gradients are `jax.grad` "
        f"of that loss and of `mean_squared_error` on sigmoid(logit).\n\n"
        f"**Classifier.** The digits MLP ({DEPTH}x{WIDTH}, ReLU, no dropout or label "
        f"smoothing; 1,257 training and 180 validation images), batch {BATCH}, {s['steps']} "
        f"steps, evaluated every {EVAL_EVERY}. `loss.name=cross_entropy` (softmax) against "
        f"`loss.name=mse`, which regresses the 10 raw outputs onto the one-hot label. Plain SGD "
        f"(the article's w <- w - lr x gradient, no momentum) at {sgd}"
        + (f", and Adam at {adam}" if adam else "") + ", constant. "
        f"MSE's gradient, 2(output - target)/10 per output, is several times smaller than "
        f"cross-entropy's (softmax - one-hot), so one shared rate would mostly compare step "
        f"sizes: each loss is shown at its own best rate, the one whose seeds all reach "
        f"{SHOWN_TARGET:.0%} soonest on average. A target counts as reached when the validation "
        f"accuracy averaged over the last {WINDOW} evaluations gets there, so one lucky "
        f"evaluation of 180 images does not count. "
        + ("Quick mode runs only the best rates of the default sweep. " if study.quick else "")
        + f"\n\n**Regression.** The shipped `diabetes_mlp.py` (442 patients, 10 standardised "
          f"measurements -> progression after one year; 1x32 MLP, AdamW at 0.01, weight decay "
          f"0.01, batch 32), {s['regression_steps']} steps on MSE"
        + (", beside a linear model (`model.depth=0`) at learning rate 0.3: at 0.01 Adam moves "
           "its bias ~0.01 a step and after 900 steps it is far from the mean progression of "
           "~150 (test MSE 24,000); in a probe over 0.01-1, 0.3 was best for the linear model "
           "and 0.01 for the MLP" if len(s["regression_models"]) > 1 else "")
        + f"; R² = 1 - test MSE / variance of the test targets. Seeds "
          f"{', '.join(map(str, study.seeds))} change the initial weights and the batch order.")


def _tables(data) -> list[Table]:
    rows = []
    for c in data["classifier"]:
        diverged = sum(c["diverged"])
        rows.append([c["optimizer"], NAMES[c["loss"]], f"{c['lr']:g}",
                     _steps(c["steps_to"]["0.90"]), _steps(c["steps_to"]["0.95"]),
                     spread(c["final_val_accuracy"]) + (f" ({diverged} diverged)" if diverged
                                                        else "")])
    classifier = Table(f"The digits MLP: steps until the validation accuracy, averaged over "
                       f"{WINDOW} evaluations, reaches 90 % and 95 % (mean (min-max) over "
                       f"seeds), and the accuracy after {data['steps']} steps",
                       ["optimizer", "loss", "learning rate", "steps to 90 %", "steps to 95 %",
                        "final validation accuracy"], rows)
    r = data["regression"]
    rows = [[name, _whole(m["test_mse"]), _whole(np.sqrt(m["test_mse"])), _whole(m["test_mae"]),
             spread(m["r2"])] for name, m in r["models"].items()]
    rows.append(["predict the training mean", f"{r['mean_predictor_mse']:.0f}",
                 f"{np.sqrt(r['mean_predictor_mse']):.1f}", "", "0 (about)"])
    regression = Table("Diabetes: test error in the target's units (progression score)",
                       ["model", "test MSE", "RMSE", "MAE", "R²"], rows)
    b = data["bce"]
    formula = Table("Binary cross-entropy for a true class 1 (nats)",
                    ["p = 0.01 (wrong, confident)", "p = 0.5", "p = 0.99 (right, confident)",
                     "max relative difference, toolkit vs formula"],
                    [[f"{b['wrong_confident']:.3f}", f"{b['unsure']:.3f}",
                      f"{b['right_confident']:.4f}", f"{b['max_relative_error']:.1e}"]])
    return [formula, classifier, regression]


def _meaning(data) -> str:
    key = f"{SHOWN_TARGET:.2f}"
    sgd, adam, r = data["best"]["sgd"], data["best"]["adam"], data["regression"]["models"]
    mse_there = [c for c in data["classifier"] if c["optimizer"] == "sgd" and c["loss"] == "mse"
                 and c["lr"] == sgd["cross_entropy"]["lr"]]
    return (
        f"The formula is what the toolkit computes, and it behaves as the article says: "
        f"{data['bce']['wrong_confident']:.1f} nats for a confident wrong answer, "
        f"{data['bce']['right_confident']:.3f} for a confident right one. Its real strength is "
        f"its gradient, which pushes a wrong logit with a force that does not fade, where "
        f"squared error on a sigmoid output goes quiet exactly when the net is most wrong. But "
        f"the toolkit's MSE classifier regresses raw outputs, with no sigmoid or softmax to "
        f"saturate, and then which one trains faster depends on the optimizer. "
        f"With plain SGD at each loss's best rate, {_race(sgd)}"
        + (f"; at cross-entropy's best rate MSE needs "
           f"{_steps(mse_there[0]['steps_to'][key])}, mostly because its gradient is smaller"
           if mse_there else "")
        + f". With Adam, which rescales every step, {_race(adam)}, and MSE ends at "
          f"{spread(adam['mse']['final_val_accuracy'])} validation accuracy against "
          f"{spread(adam['cross_entropy']['final_val_accuracy'])}. Cross-entropy is the natural "
          f"loss for class probabilities, not the only one that trains a classifier well. For "
          f"regression MSE does its job, in the target's squared units: on diabetes the MLP "
          f"explains R² = {spread(r['MLP']['r2'])} of the test variance"
        + (f", the linear model {spread(r['linear']['r2'])}" if "linear" in r else "") + ".")
