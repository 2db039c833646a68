"""Loss functions: the article's binary cross-entropy, cross-entropy against MSE on the same
classifier, and MSE for regression.

The toolkit's `sigmoid_binary_cross_entropy` is checked against the article's formula in
float64 over a grid of probabilities. The digits MLP is then trained with cross-entropy and with
MSE (its raw outputs regressed onto one-hot targets), by plain SGD and by Adam: each of the four
arms at its own learning rate, the one of a bracketed sweep (`common.tune`) that reaches 95 %
validation accuracy soonest, and which loss gets there first is decided by a paired test over
the seeds (`common.compare`). An MLP is also trained on MSE to predict diabetes progression.
"""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import run as run_api
from experiments.studies.common import (Cited, Table, Tuned, band, compare, extending,
                                        new_figure, on_grid, spread, tune)
from train import losses

TITLE = "Loss functions: cross-entropy and MSE"
CLAIM = ("Binary cross-entropy, -[y log p + (1 - y) log(1 - p)], is high when the prediction "
         "is wrong and near zero when it is right and confident: the loss for classification; "
         "mean squared error is the loss for regression.")
SEEDS = 5

TARGETS = (0.90, 0.95)  # validation accuracies whose first step is measured
SHOWN_TARGET = 0.95
LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = {"sgd": "plain SGD", "adam": "Adam"}
COLORS = {"cross_entropy": "tab:blue", "mse": "tab:orange"}
NAMES = {"cross_entropy": "cross-entropy", "mse": "MSE on one-hot targets"}
SHORT = {"cross_entropy": "cross-entropy", "mse": "MSE"}
WIDTH, DEPTH, BATCH, EVAL_EVERY = 512, 2, 32, 5
WINDOW = 3  # evaluations averaged when finding the step a target accuracy is reached


def settings(quick: bool) -> dict:
    if quick:  # the test's claim: both races, 5 seeds, each arm at the default sweep's rate,
        # for as many steps as its slowest seed needed there and a margin
        return dict(rates={("sgd", "cross_entropy"): (0.3,), ("sgd", "mse"): (1.0,),
                           ("adam", "cross_entropy"): (3e-3,), ("adam", "mse"): (1e-3,)},
                    extensions=0, steps={"sgd": 250, "adam": 150},
                    regression_models=(("MLP", 1, 32, 0.01),), regression_steps=300)
    # three rungs of the 1-3-10 ladder around each arm's best rate of an earlier, wider sweep
    # (SGD 0.03-3, Adam 0.0003-0.003 for both losses), extended while the best is at an edge
    return dict(rates={("sgd", "cross_entropy"): (0.1, 0.3, 1.0),
                       ("sgd", "mse"): (0.3, 1.0, 3.0),
                       ("adam", "cross_entropy"): (1e-3, 3e-3, 1e-2),
                       ("adam", "mse"): (1e-3, 3e-3, 1e-2)},
                extensions=2, steps={"sgd": 300, "adam": 300},
                regression_models=(("linear", 0, 1, 0.3), ("MLP", 1, 32, 0.01)),
                regression_steps=900)


def run(study) -> dict:
    s = settings(study.quick)
    study.plan(len(study.seeds) * (sum(len(r) for r in s["rates"].values())
                                   + len(s["regression_models"])))
    bce, curves = _binary_cross_entropy_check()

    tuned = {arm: _tune(study, arm, rates, s) for arm, rates in s["rates"].items()}
    arms = {arm: _arm_summary(arm, t) for arm, t in tuned.items()}
    optimizers = list(dict.fromkeys(opt for opt, _ in arms))
    race = {opt: _race(arms[opt, "cross_entropy"], arms[opt, "mse"]) for opt in optimizers}
    accuracy = {opt: _accuracy(arms[opt, "cross_entropy"], arms[opt, "mse"])
                for opt in optimizers}

    regression_runs = {name: study.train_seeds(
        f"diabetes-{name}",
        lambda seed, depth=depth, width=width, lr=lr: _regression_config(
            study, depth, width, lr, s["regression_steps"], seed))
        for name, depth, width, lr in s["regression_models"]}
    regression = _regression_summary(regression_runs)

    data = {"bce": bce, "arms": list(arms.values()), "race": race, "final_accuracy": accuracy,
            "regression": regression, "steps": s["steps"]}
    _plot_race(study, data, {arm: t.runs for arm, t in tuned.items()}, s)
    if not study.quick:
        _plot_sweeps(study, data)
    _plot_bce(study, curves)
    if not study.quick:  # its test-set panel restores and compiles one more model
        _plot_regression(study, regression_runs, regression)
    return {"finding": _finding(data), "setup": _setup(study, s), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "",
            "literature": _literature(data) if not study.quick else [], "data": data}


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


def _tune(study, arm, rates, s) -> Tuned:
    """The arm at its own rate: `common.tune`'s sweep; or, with one rate given (quick mode),
    that rate's seeds alone, trained without the test-set evaluation nothing here reads."""
    def config_for(lr, seed):
        return _classifier_config(study, *arm, lr, s["steps"][arm[0]], seed)

    def score(r):
        return _score(r, s["steps"][arm[0]])

    if len(rates) > 1:
        return tune(study, "-".join(arm), config_for, rates, score=score,
                    extensions=s["extensions"])
    runs = study.train_seeds(f"{'-'.join(arm)}-lr{rates[0]:g}",
                             lambda seed: config_for(rates[0], seed), test=False)
    values = [score(r) for r in runs]
    return Tuned(rates[0], runs, {rates[0]: float(np.mean(values))}, False)


def _smoothed(r):
    """(steps, validation accuracy averaged over the last WINDOW evaluations): one lucky
    evaluation of 180 images does not count."""
    steps, accuracy = r.curve("eval_accuracy")
    if len(accuracy) < WINDOW:
        return steps[:0], accuracy[:0]
    return steps[WINDOW - 1:], np.convolve(accuracy, np.ones(WINDOW) / WINDOW, mode="valid")


def _first_step_at(r, target: float):
    """The first step at which the smoothed validation accuracy reaches `target`, or None."""
    steps, smoothed = _smoothed(r)
    reached = np.flatnonzero(smoothed >= target)
    return None if r.diverged or not len(reached) else int(steps[reached[0]])


def _score(r, budget: int) -> float:
    """What each arm's sweep minimises: the step at which the shown target is first reached. A
    run that never gets there scores past the budget by how far its smoothed accuracy ended
    below the target (so such rates still rank among themselves); a diverged run, inf."""
    if r.diverged:
        return np.inf
    reached = _first_step_at(r, SHOWN_TARGET)
    if reached is not None:
        return float(reached)
    _, smoothed = _smoothed(r)
    return budget * (1 + SHOWN_TARGET - (smoothed[-1] if len(smoothed) else 0.0))


def _outcomes(rs) -> dict:
    return {"steps_to": {f"{t:.2f}": [_first_step_at(r, t) for r in rs] for t in TARGETS},
            "final_val_accuracy": [0.0 if r.diverged else r.last("eval_accuracy") for r in rs],
            "diverged": [bool(r.diverged) for r in rs]}


def _arm_summary(arm, t) -> dict:
    """An arm at the rate its sweep picked, with the mean score of every rate it tried."""
    optimizer, loss = arm
    return {"optimizer": optimizer, "loss": loss, "lr": t.rate, "at_edge": t.at_edge,
            "sweep": [{"lr": lr, "score": None if not np.isfinite(t.sweep[lr]) else t.sweep[lr]}
                      for lr in sorted(t.sweep)], **_outcomes(t.runs)}


def _steps_or_inf(arm) -> np.ndarray:
    """Steps to the shown target per seed; inf where a seed never got there."""
    return np.array([np.inf if v is None else v for v in arm["steps_to"][f"{SHOWN_TARGET:.2f}"]],
                    dtype=float)


def _race(ce, mse) -> dict:
    """Which loss reaches the shown target first: a paired t-test over the seeds on the steps
    (an exact sign test where one arm never got there on some seed)."""
    c = compare(_steps_or_inf(ce), _steps_or_inf(mse))
    first = {"a": "cross_entropy", "b": "mse", "tie": "tie"}[c.verdict]
    return {"first": first, "p": c.p, "mean_difference": c.difference, "seeds": c.seeds}


def _accuracy(ce, mse) -> dict:
    """The final validation accuracies of the two losses, by the same paired test."""
    c = compare(ce["final_val_accuracy"], mse["final_val_accuracy"], lower_is_better=False)
    better = {"a": "cross_entropy", "b": "mse", "tie": "tie"}[c.verdict]
    return {"better": better, "p": c.p, "mean_difference": c.difference, "seeds": c.seeds}


def _steps(values) -> str:
    if None in values:
        hit = [v for v in values if v is not None]
        return f"never ({len(values) - len(hit)} of {len(values)} seeds)" if not hit else (
            f"{np.mean(hit):.0f} ({len(values) - len(hit)} of {len(values)} seeds never)")
    v = np.asarray(values)
    return f"{v.mean():.0f}" + (f" ({v.min()}-{v.max()})" if len(v) > 1 else "")


def _race_words(data, opt) -> str:
    """'cross-entropy reaches 95 % validation accuracy first under plain SGD (103 (100-105)
    steps at lr 0.3 against MSE's 138 (130-145) at lr 1; paired t-test over 5 seeds,
    p = 0.001)', or 'neither loss ... first ... (a tie: ...)'."""
    ce, mse = (_arm(data, opt, loss) for loss in LOSSES)
    race, key = data["race"][opt], f"{SHOWN_TARGET:.2f}"
    numbers = (f"{_steps(ce['steps_to'][key])} steps for cross-entropy at lr {ce['lr']:g}, "
               f"{_steps(mse['steps_to'][key])} for MSE at lr {mse['lr']:g}; paired t-test "
               f"over {race['seeds']} seeds, p = {race['p']:.2g}")
    if race["first"] == "tie":
        return (f"neither loss reaches {SHOWN_TARGET:.0%} validation accuracy first under "
                f"{OPTIMIZERS[opt]} ({numbers}: a tie)")
    return (f"{SHORT[race['first']]} reaches {SHOWN_TARGET:.0%} validation accuracy first under "
            f"{OPTIMIZERS[opt]} ({numbers})")


def _steps_words(steps) -> str:
    """'300 steps', or '250 steps (plain SGD) and 150 (Adam)'."""
    if len(set(steps.values())) == 1:
        return f"{next(iter(steps.values()))} steps"
    return " and ".join(f"{n}" + (" steps" if i == 0 else "") + f" ({OPTIMIZERS[opt]})"
                        for i, (opt, n) in enumerate(steps.items()))


def _arm(data, opt, loss) -> dict:
    return next(a for a in data["arms"] if (a["optimizer"], a["loss"]) == (opt, loss))


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
def _plot_race(study, data, runs, s):
    optimizers = list(data["race"])
    fig, axes = new_figure(2, len(optimizers), width=4.7, height=3.5)
    key = f"{SHOWN_TARGET:.2f}"
    for row, opt in zip(axes, optimizers):
        budget = s["steps"][opt]
        grid = np.arange(EVAL_EVERY, budget + 1, EVAL_EVERY)
        ax = row[0]
        for loss in LOSSES:
            arm, rs = _arm(data, opt, loss), runs[opt, loss]
            band(ax, grid, on_grid(rs, "eval_accuracy", grid),
                 f"{SHORT[loss]}, lr {arm['lr']:g}", COLORS[loss])
            stopped = [r.diverged_at for r in rs if r.diverged]
            ax.plot(stopped, [0.995] * len(stopped), "x", color=COLORS[loss])
        ax.axhline(SHOWN_TARGET, color="gray", lw=0.8, ls=":")
        ax.set_ylim(0.8, 1.0)
        ax.set_xlabel("training step (batch 32)")
        ax.set_ylabel("validation accuracy (from 0.8)")
        ax.set_title(f"{OPTIMIZERS[opt]}: learning curves", fontsize=10)
        ax.legend(fontsize=8, loc="lower right", title="loss, its own rate", title_fontsize=8)
        ax = row[1]
        steps = {loss: _arm(data, opt, loss)["steps_to"][key] for loss in LOSSES}
        never = budget * 1.06
        ys = np.array([[never if v is None else v for v in steps[loss]] for loss in LOSSES],
                      dtype=float)
        jitter = 0.04 * (np.arange(ys.shape[1]) - (ys.shape[1] - 1) / 2)  # seeds side by side
        ax.plot(np.array([[0], [1]]) + jitter, ys, "-", color="gray", alpha=0.5, linewidth=1)
        for i, loss in enumerate(LOSSES):
            reached = [v is not None for v in steps[loss]]
            xs = i + jitter
            ax.plot(xs[reached], ys[i][reached], "o", color=COLORS[loss], markersize=6)
            ax.plot(xs[~np.array(reached)], ys[i][~np.array(reached)], "x",
                    color=COLORS[loss], markersize=8, markeredgewidth=2)
        ax.axhline(budget, color="k", lw=0.8, ls=":")
        ax.text(0.5, budget, f"budget ({budget} steps); x: never", fontsize=7, ha="center",
                va="bottom")
        ax.set_xlim(-0.4, 1.4)
        ax.set_ylim(0, budget * 1.14)
        ax.set_xticks([0, 1], [SHORT[loss] for loss in LOSSES])
        ax.set_ylabel(f"steps to {SHOWN_TARGET:.0%} validation accuracy")
        race = data["race"][opt]
        verdict = ("a tie" if race["first"] == "tie" else f"{SHORT[race['first']]} first")
        ax.set_title(f"{OPTIMIZERS[opt]}: {verdict} (paired t-test, p = {race['p']:.2g})",
                     fontsize=10)
    fig.suptitle(f"Cross-entropy against MSE on the same {DEPTH}x{WIDTH} digits MLP, each at "
                 f"its own rate ({len(study.seeds)} seeds)", fontsize=11)
    study.figure(fig, "cross_entropy_vs_mse.png",
                 f"Left: validation accuracy while training, each loss at the rate its sweep "
                 f"picked (mean, min-max over seeds). Right: the step at which each seed's "
                 f"validation accuracy, averaged over {WINDOW} evaluations, first reaches "
                 f"{SHOWN_TARGET:.0%}; a grey line joins the two losses' runs of the same seed "
                 f"(same initial weights and batch order).")


def _plot_sweeps(study, data):
    optimizers = list(data["race"])
    fig, axes = new_figure(len(optimizers), 1, width=4.6, height=3.6)
    for ax, opt in zip(axes[0], optimizers):
        budget = data["steps"][opt]
        for loss in LOSSES:
            arm = _arm(data, opt, loss)
            xs = [p["lr"] for p in arm["sweep"]]
            ys = [np.nan if p["score"] is None else p["score"] for p in arm["sweep"]]
            ax.plot(xs, ys, "o-", color=COLORS[loss], markersize=4, label=SHORT[loss])
            ax.plot([arm["lr"]], [ys[xs.index(arm["lr"])]], "*", color=COLORS[loss],
                    markersize=13)
            for p in arm["sweep"]:
                if p["score"] is None:
                    ax.axvline(p["lr"], color=COLORS[loss], alpha=0.4, linewidth=1)
        ax.axhline(budget, color="k", lw=0.8, ls=":", label=f"budget ({budget} steps)")
        ax.set_xscale("log")
        ax.margins(x=0.08)
        ax.set_ylim(0, None)
        ax.set_xlabel(f"learning rate ({OPTIMIZERS[opt]}, constant)")
        ax.set_ylabel(f"mean steps to {SHOWN_TARGET:.0%} (past the budget: never)")
        ax.set_title(OPTIMIZERS[opt], fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Each arm's sweep (star: the rate used; thin line: a seed diverged)",
                 fontsize=10)
    study.figure(fig, "sweeps.png",
                 f"The score each arm's sweep minimised, mean over seeds: the step at which the "
                 f"smoothed validation accuracy first reaches {SHOWN_TARGET:.0%}, or, for a "
                 f"seed that never does, the budget times (1 + {SHOWN_TARGET} - its final "
                 f"smoothed accuracy).")


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
def _finding(data) -> str:
    bce, optimizers = data["bce"], list(data["race"])
    races = ", and ".join(_race_words(data, opt) for opt in optimizers)
    mlp = data["regression"]["models"]["MLP"]
    return (
        f"The toolkit's binary cross-entropy equals the article's formula to a relative "
        f"{bce['max_relative_error']:.0e} (float64): {bce['right_confident']:.3f} when the true "
        f"class gets p = 0.99, {bce['wrong_confident']:.2f} when it gets p = 0.01; on the digits "
        f"MLP, each loss at its own tuned rate, {races}; on diabetes, an MLP trained on MSE "
        f"reaches test MSE {_whole(mlp['test_mse'])} (R² {spread(mlp['r2'])}) against "
        f"{data['regression']['mean_predictor_mse']:.0f} for predicting the mean.")


def _setup(study, s) -> str:
    def rates(opt):
        return "; ".join(f"{SHORT[loss]} {', '.join(f'{lr:g}' for lr in s['rates'][opt, loss])}"
                         for loss in LOSSES if (opt, loss) in s["rates"])

    seeds = ", ".join(map(str, study.seeds))
    sweep = ("Quick mode trains each arm at the rate the default-size sweep picked for it, so "
             "it sweeps nothing. " if study.quick else
             f"Each of the four arms (optimizer x loss) gets its own rate from a sweep over the "
             f"1-3-10 ladder, all its rates and seeds trained as one program (`common.tune`), "
             f"{extending(s['extensions'])}. ")
    return (
        f"**Formula.** For 999 values of p in [0.001, 0.999], the toolkit's "
        f"`train.losses.sigmoid_binary_cross_entropy` of the logit log(p/(1-p)) against "
        f"-[y log p + (1-y) log(1-p)], in float64, for y = 1 and 0; the gradients are `jax.grad` "
        f"of that loss and of `mean_squared_error` on sigmoid(logit).\n\n"
        f"**Classifier.** The digits MLP ({DEPTH}x{WIDTH}, ReLU, no dropout or label "
        f"smoothing; 1,257 training and 180 validation images), batch {BATCH}, "
        f"{_steps_words(s['steps'])}, evaluated every {EVAL_EVERY}. `loss.name=cross_entropy` "
        f"(softmax) against `loss.name=mse`, which regresses the 10 raw outputs onto the one-hot "
        f"label. Plain SGD "
        f"(the article's w <- w - lr x gradient, no momentum) and Adam, at constant rates"
        + (": " if study.quick else "; the sweeps start at ")
        + f"{rates('sgd')} (SGD) and {rates('adam')} (Adam). MSE's gradient, 2(output - "
          f"target)/10 per output, is several times smaller than cross-entropy's (softmax - "
          f"one-hot), so one shared rate would mostly compare step sizes. {sweep}A sweep "
          f"keeps the rate whose seeds reach {SHOWN_TARGET:.0%} validation accuracy soonest "
          f"on average (a seed that never gets there scores the budget times 1 + "
          f"{SHOWN_TARGET} - its final accuracy; a rate at which any seed diverged loses). A "
          f"target counts as reached when the validation accuracy averaged over the last "
          f"{WINDOW} evaluations gets there, so one lucky "
        f"evaluation of 180 images does not count. Which loss reaches {SHOWN_TARGET:.0%} first "
        f"is decided by `common.compare`: a two-sided paired t-test on the steps over seeds "
        f"{seeds} (seed i of one loss against seed i of the other: the same initial weights "
        f"and batch order), \"first\" only where p < 0.05 and \"tie\" otherwise; where a seed "
        f"of one arm never got there, an exact sign test decides instead."
        f"\n\n**Regression.** The shipped `diabetes_mlp.py` (442 patients, 10 standardised "
        f"measurements -> progression after one year; 1x32 MLP, AdamW at 0.01, weight decay "
        f"0.01, batch 32), {s['regression_steps']} steps on MSE"
        + (", beside a linear model (`model.depth=0`) at learning rate 0.3: at 0.01 Adam moves "
           "its bias ~0.01 a step and after 900 steps it is far from the mean progression of "
           "~150 (test MSE 24,000); in a probe over 0.01-1, 0.3 was best for the linear model "
           "and 0.01 for the MLP" if len(s["regression_models"]) > 1 else "")
        + "; R² = 1 - test MSE / variance of the test targets. The seeds change the initial "
          "weights and the batch order.")


def _tables(data) -> list[Table]:
    b = data["bce"]
    formula = Table("Binary cross-entropy for a true class 1 (nats)",
                    ["p = 0.01 (wrong, confident)", "p = 0.5", "p = 0.99 (right, confident)",
                     "max relative difference, toolkit vs formula"],
                    [[f"{b['wrong_confident']:.3f}", f"{b['unsure']:.3f}",
                      f"{b['right_confident']:.4f}", f"{b['max_relative_error']:.1e}"]])
    rows = []
    for a in data["arms"]:
        diverged = sum(a["diverged"])
        tried = ", ".join(f"{p['lr']:g}: " + ("diverged" if p["score"] is None else
                                               f"{p['score']:.0f}") for p in a["sweep"])
        rows.append([OPTIMIZERS[a["optimizer"]], NAMES[a["loss"]],
                     f"{a['lr']:g}" + (" (edge)" if a["at_edge"] else ""), tried,
                     _steps(a["steps_to"]["0.90"]), _steps(a["steps_to"]["0.95"]),
                     spread(a["final_val_accuracy"]) + (f" ({diverged} diverged)" if diverged
                                                        else "")])
    arms = Table(f"The digits MLP, each arm at its own rate: steps until the validation "
                 f"accuracy, averaged over {WINDOW} evaluations, reaches 90 % and 95 % (mean "
                 f"(min-max) over seeds), and the accuracy after {_steps_words(data['steps'])}",
                 ["optimizer", "loss", "learning rate", "rates tried: mean score",
                  "steps to 90 %", "steps to 95 %", "final validation accuracy"], rows)
    rows = []
    for opt, race in data["race"].items():
        acc = data["final_accuracy"][opt]
        rows.append([OPTIMIZERS[opt],
                     "tie" if race["first"] == "tie" else SHORT[race["first"]],
                     f"{race['p']:.2g}",
                     "tie" if acc["better"] == "tie" else SHORT[acc["better"]],
                     f"{acc['p']:.2g}"])
    verdicts = Table(f"Cross-entropy against MSE, paired over {data['race']['sgd']['seeds']} "
                     f"seeds (two-sided paired t-test; a winner only where p < 0.05)",
                     ["optimizer", f"first to {SHOWN_TARGET:.0%}", "p",
                      f"higher accuracy after {_steps_words(data['steps'])}", "p"], rows)
    r = data["regression"]
    rows = [[name, _whole(m["test_mse"]), _whole(np.sqrt(m["test_mse"])), _whole(m["test_mae"]),
             spread(m["r2"])] for name, m in r["models"].items()]
    rows.append(["predict the training mean", f"{r['mean_predictor_mse']:.0f}",
                 f"{np.sqrt(r['mean_predictor_mse']):.1f}", "", "0 (about)"])
    regression = Table("Diabetes: test error in the target's units (progression score)",
                       ["model", "test MSE", "RMSE", "MAE", "R²"], rows)
    return [formula, verdicts, arms, regression]


def _meaning(data) -> str:
    r = data["regression"]["models"]
    adam_acc = data["final_accuracy"]["adam"]
    ce, mse = (_arm(data, "adam", loss) for loss in LOSSES)
    return (
        f"The formula is what the toolkit computes, and it behaves as the article says: "
        f"{data['bce']['wrong_confident']:.1f} nats for a confident wrong answer, "
        f"{data['bce']['right_confident']:.3f} for a confident right one. Its real strength is "
        f"its gradient, which pushes a wrong logit with a force that does not fade, where "
        f"squared error on a sigmoid output goes quiet exactly when the net is most wrong. But "
        f"the toolkit's MSE classifier regresses raw outputs, with no sigmoid or softmax to "
        f"saturate, and then MSE trains the classifier too: {_race_words(data, 'sgd')}; "
        f"with Adam, which rescales every step, {_race_words(data, 'adam')}. "
        + _order(data)
        + f" After {data['steps']['adam']} Adam steps MSE is at "
          f"{spread(mse['final_val_accuracy'])} validation accuracy and cross-entropy at "
          f"{spread(ce['final_val_accuracy'])} ("
        + ("a tie" if adam_acc["better"] == "tie" else f"{SHORT[adam_acc['better']]} higher")
        + f", paired t-test, p = {adam_acc['p']:.2g}). Cross-entropy is the natural loss for "
          f"class probabilities, not the only one that trains a classifier well. For "
          f"regression MSE does its job, in the target's squared units: on diabetes the MLP "
          f"explains R² = {spread(r['MLP']['r2'])} of the test variance"
        + (f", the linear model {spread(r['linear']['r2'])}" if "linear" in r else "") + ".")


def _order(data) -> str:
    """Whether the two optimizers put the losses in the same order, in the verdicts' words."""
    sgd, adam = data["race"]["sgd"]["first"], data["race"]["adam"]["first"]
    if sgd == adam:
        return ("Both optimizers agree." if sgd != "tie" else
                "Under neither optimizer do the seeds settle which loss is faster.")
    if "tie" not in (sgd, adam):
        return "The order reverses with the optimizer."
    decided, tied = ("sgd", "adam") if adam == "tie" else ("adam", "sgd")
    winner = SHORT[data["race"][decided]["first"]]
    ahead = "MSE" if data["race"][tied]["mean_difference"] > 0 else "cross-entropy"
    return (f"{winner.capitalize()}'s lead under {OPTIMIZERS[decided]} does not carry over to "
            f"{OPTIMIZERS[tied]}, where {ahead} is ahead on average but the seeds do not "
            f"settle it.")


def _literature(data) -> list[Cited]:
    key = f"{SHOWN_TARGET:.2f}"

    def arm(opt, loss):
        a = _arm(data, opt, loss)
        return f"{SHORT[loss]} {spread(a['final_val_accuracy'])}"

    def accuracy(opt):
        acc = data["final_accuracy"][opt]
        return ("a tie" if acc["better"] == "tie" else f"{SHORT[acc['better']]} higher") + (
            f" (p = {acc['p']:.2g})")

    mse_reaches = all(v is not None for opt in data["race"]
                      for v in _arm(data, opt, "mse")["steps_to"][key])
    neither_worse = all(data["final_accuracy"][opt]["better"] != "cross_entropy"
                        for opt in data["race"])
    return [
        Cited("Golik, Doetsch & Ney 2013",
              "speech and handwriting recognition with hybrid HMM-ANN models: from random "
              "initial weights, squared-error training does not converge to a good optimum; "
              "started from cross-entropy-trained weights, a few squared-error iterations lower "
              "the error rate slightly",
              f"from random initial weights, MSE reaches {SHOWN_TARGET:.0%} on every seed under "
              f"both optimizers" if mse_reaches else
              f"from random initial weights, MSE misses {SHOWN_TARGET:.0%} on some seed",
              ("disagrees on this task, but " if mse_reaches else "agrees in part, but ")
              + "not comparable in setup: there the squared error is on the network's "
                "posterior (softmax) outputs, which saturate, and the tasks are far larger; "
                "here it is on raw outputs of a small MLP on 1,257 digits"),
        Cited("Janocha & Czarnecki 2017",
              "L1 and L2 losses are justified classification objectives for deep nets "
              "(read as expected misclassification) and viable alternatives to log loss, "
              "in experiments on classical image datasets",
              f"accuracy after {_steps_words(data['steps'])}: plain SGD "
              f"{arm('sgd', 'cross_entropy')}, {arm('sgd', 'mse')}; "
              f"Adam {arm('adam', 'cross_entropy')}, {arm('adam', 'mse')}",
              "agrees: MSE on one-hot targets trains the classifier" + (
                  " as accurately as cross-entropy or more" if neither_worse else
                  ", though less accurately than cross-entropy under one optimizer")),
        Cited("Hui & Belkin 2021",
              "across NLP, speech and vision benchmarks, with the architectures' published "
              "hyper-parameters, square loss performs comparably to or better than "
              "cross-entropy (better in most NLP and speech tasks; cross-entropy slightly "
              "ahead in vision)",
              f"final validation accuracy, MSE against cross-entropy: plain SGD "
              f"{accuracy('sgd')}, Adam {accuracy('adam')}",
              ("agrees: " if neither_worse else "disagrees in part: ")
              + "here each loss has its own tuned rate; one small vision task, so only their "
                "direction is comparable, not their sizes"),
    ]
