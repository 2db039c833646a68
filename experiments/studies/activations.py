"""Activations and vanishing gradients: does ReLU keep gradients alive where sigmoid and tanh
let them die?

MLPs of width 64 and depth 5, 10 and 20 on scikit-learn's digits, with each activation under
each initialisation (LeCun, Glorot, He), trained by SGD with momentum; every layer's gradient
norm is logged from the first step on (`log.layer_grad_norms`). Adam, which rescales each
parameter's step by its gradient's running size, is run beside it at depths 10 and 20. Every
arm (optimizer, depth, activation, initialisation) gets its own learning rate from a bracketed
sweep on the validation loss.

Larger, on an accelerator: width 256 and depths up to 50 on MNIST (in `settings()`).
"""
import numpy as np
from matplotlib.ticker import MaxNLocator

from experiments.studies.common import (Cited, Table, band, compare, extending, new_figure,
                                        spread, tune)

TITLE = "Activations and vanishing gradients"
CLAIM = ("ReLU does not saturate, so gradients flow through deep networks; sigmoid and tanh "
         "made them vanish.")
SEEDS = 5

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
INITS = ("lecun", "glorot", "he")
USUAL_INIT = {"sigmoid": "glorot", "tanh": "glorot", "relu": "he", "gelu": "he"}
COLORS = {"sigmoid": "tab:red", "tanh": "tab:orange", "relu": "tab:blue", "gelu": "tab:green"}
STYLES = {"lecun": ":", "glorot": "--", "he": "-"}
BATCH, WIDTH = 64, 64
TRAINS = 0.5  # a run "trains" when its final validation accuracy reaches this (chance: 0.1)


def settings(quick: bool) -> dict:
    if quick:  # the test's claim: depth 10, sigmoid against ReLU under both of its inits
        return dict(depths=(10,), combos=[("sigmoid", "glorot"), ("relu", "lecun"),
                                          ("relu", "he")], adam_depths=(), steps=400,
                    rates={"sgd": (1e-2, 3e-2)}, extensions=0)
    return dict(depths=(5, 10, 20), combos=[(a, i) for a in ACTIVATIONS for i in INITS],
                adam_depths=(10, 20), steps=1500,
                rates={"sgd": (3e-3, 1e-2, 3e-2), "adam": (3e-4, 1e-3, 3e-3)}, extensions=2)


def run(study) -> dict:
    s = settings(study.quick)
    arms = ([("sgd", depth, act, init) for depth in s["depths"] for act, init in s["combos"]]
            + [("adam", depth, act, USUAL_INIT[act]) for depth in s["adam_depths"]
               for act in ACTIVATIONS])
    study.plan(len(study.seeds) * sum(len(s["rates"][arm[0]]) for arm in arms))
    tuned = {arm: tune(study, "{}-depth{}-{}-{}".format(*arm),
                       lambda lr, seed: _config(study, *arm, lr, s["steps"], seed),
                       s["rates"][arm[0]], score=_score, extensions=s["extensions"])
             for arm in arms}
    runs = {arm: t.runs for arm, t in tuned.items()}  # each arm's runs at its own rate

    data = {"runs": [_summary(key, t) for key, t in tuned.items()]}
    _plot_gradients_at_init(study, runs, s["depths"])
    _plot_first_layer_during_training(study, runs, s["depths"])
    _plot_learning_curves(study, runs)

    by_key = {(r["optimizer"], r["depth"], r["activation"], r["init"]): r for r in data["runs"]}
    d = 10
    sig = by_key["sgd", d, "sigmoid", "glorot"]
    relu_he, relu_lecun = by_key["sgd", d, "relu", "he"], by_key["sgd", d, "relu", "lecun"]
    finding = (
        f"At depth {d} and initialisation, sigmoid's first-layer gradient norm is "
        f"{np.mean(sig['first_layer_grad_at_init']):.1e} against ReLU's "
        f"{np.mean(relu_lecun['first_layer_grad_at_init']):.1e} (LeCun) and "
        f"{np.mean(relu_he['first_layer_grad_at_init']):.1e} (He), and after "
        f"{s['steps']} SGD steps sigmoid sits at {spread(sig['final_val_accuracy'])} "
        f"validation accuracy (chance 0.1) while ReLU with He reaches "
        f"{spread(relu_he['final_val_accuracy'])}.")
    if not study.quick:
        deep = max(s["depths"])
        tanh, tanh_deep = by_key["sgd", d, "tanh", "glorot"], by_key["sgd", deep, "tanh", "glorot"]
        relu_deep = by_key["sgd", deep, "relu", "he"]
        finding = finding[:-1] + (
            f"; tanh with Glorot trains too ({spread(tanh['final_val_accuracy'])}), and at "
            f"depth {deep} it reaches {spread(tanh_deep['final_val_accuracy'])} "
            f"({tanh_deep['trained']} of {len(study.seeds)} seeds train) where ReLU with He "
            f"gets {spread(relu_deep['final_val_accuracy'])} ({relu_deep['trained']} of "
            f"{len(study.seeds)}): "
            + _versus(by_key, ("sgd", deep, "tanh", "glorot"), ("sgd", deep, "relu", "he"))
            + ".")
    finding = finding[:-1] + " (each arm at its own learning rate)."
    return {"finding": finding, "setup": _setup(study, s), "tables": _tables(data, s),
            "meaning": _meaning(by_key, s) if not study.quick else "",
            "literature": _literature(by_key, s) if not study.quick else [], "data": data}


def _score(r) -> float:
    """What each arm's sweep minimises: the final validation loss (inf for a diverged run)."""
    return np.inf if r.diverged else r.last("eval_loss")


def _config(study, optimizer, depth, act, init, lr, steps, seed):
    return study.config(
        "digits_mlp.py", **{
            "seed": seed, "model.depth": depth, "model.width": WIDTH, "model.activation": act,
            "model.init": init, "model.dropout": 0.0, "loss.label_smoothing": 0.0,
            "optimizer.name": optimizer, "optimizer.momentum": 0.9,
            "optimizer.learning_rate": lr,
            "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
            "dataset.batch_size": BATCH, "steps": steps, "eval_every": steps // 10,
            "checkpoint.every": steps, "log_every": 25, "log.layer_grad_norms": True})


def _layer_keys(depth: int) -> list[str]:
    """The kernels' gradient-norm keys from the input layer to the head."""
    return [f"grad_norm/hidden/{i}/kernel" for i in range(depth)] + ["grad_norm/head/kernel"]


def _summary(key, t) -> dict:
    optimizer, depth, act, init = key
    first, rs = _layer_keys(depth)[0], t.runs
    return {
        "optimizer": optimizer, "depth": depth, "activation": act, "init": init,
        "learning_rate": t.rate, "rate_at_edge": t.at_edge,
        "sweep": {f"{lr:g}": v if np.isfinite(v) else None for lr, v in t.sweep.items()},
        "layer_grad_at_init": [[r.history[0][k] for k in _layer_keys(depth)] for r in rs],
        "first_layer_grad_at_init": [r.history[0][first] for r in rs],
        "first_layer_grad_final": [r.last(first) if not r.diverged else None for r in rs],
        "final_val_accuracy": [r.last("eval_accuracy") if not r.diverged else 0.0 for r in rs],
        "test_accuracy": [r.test["accuracy"] if r.test else None for r in rs],
        "diverged": [bool(r.diverged) for r in rs],
        "trained": sum(not r.diverged and r.last("eval_accuracy") >= TRAINS for r in rs),
    }


def _plot_gradients_at_init(study, runs, depths):
    fig, axes = new_figure(len(depths), 1, width=4.6, height=3.9)
    for ax, depth in zip(axes[0], depths):
        for (opt, d, act, init), rs in runs.items():
            if opt != "sgd" or d != depth:
                continue
            keys = _layer_keys(depth)
            ys = [[r.history[0][k] for k in keys] for r in rs]
            band(ax, np.arange(1, len(keys) + 1), ys, f"{act}, {init}", COLORS[act],
                 STYLES[init], marker=".")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("layer (1 = input layer, last = output head)")
    axes[0, 0].set_ylabel("gradient norm of the layer's weights")
    axes[0, -1].legend(fontsize=7, ncol=2, title="activation, init", title_fontsize=7)
    fig.suptitle("Gradient norm of every layer at initialisation (first batch of 64; "
                 "mean and min-max over seeds)")
    study.figure(fig, "gradients_at_init.png",
                 "Each layer's weight-gradient norm at step 1, per depth. Sigmoid's shrinks by "
                 "orders of magnitude towards the input; ReLU with He keeps it level.")


def _per_seed(ax, rs, key, label, color, style):
    """Every seed's curve of `key`, thin, and an x where a seed diverged: an arm whose seeds
    split (some train, some do not, some diverge) shows each of them, not a mean of the
    survivors."""
    for i, r in enumerate(rs):
        steps, values = r.curve(key)
        ax.plot(steps, values, style, color=color, lw=1, alpha=0.75,
                label=label if i == 0 else None)
        if r.diverged and len(steps):
            ax.plot(steps[-1], values[-1], "x", color=color, markersize=8, mew=2)


def _plot_first_layer_during_training(study, runs, depths):
    shown = [d for d in depths if d >= 10] or list(depths)
    fig, axes = new_figure(len(shown), 1, width=5.2, height=3.9)
    for ax, depth in zip(axes[0], shown):
        for (opt, d, act, init), rs in runs.items():
            if opt == "sgd" and d == depth and (init == USUAL_INIT[act] or act == "relu"):
                _per_seed(ax, rs, _layer_keys(depth)[0],
                          f"{act}, {init} (lr {rs[0].config.optimizer.learning_rate:g})",
                          COLORS[act], STYLES[init])
        ax.set_yscale("log")
        ax.set_title(f"depth {depth}, SGD + momentum, each arm at its own rate", fontsize=9)
        ax.set_xlabel("training step")
    axes[0, 0].set_ylabel("first layer's gradient norm")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("The input layer's gradient during training\n(every seed; x: a seed that "
                 "diverged)", fontsize=10)
    study.figure(fig, "first_layer_gradient.png",
                 "The input layer's gradient norm while training, one line per seed. Where it "
                 "stays near zero the first layer never learns.")


def _plot_learning_curves(study, runs):
    panels = [(opt, depth) for opt in ("sgd", "adam") for depth in (10, 20)
              if any(k[:2] == (opt, depth) for k in runs)]
    cols = 2 if len(panels) > 1 else 1
    fig, axes = new_figure(cols, (len(panels) + cols - 1) // cols, width=5.2, height=3.6)
    for ax, (opt, depth) in zip(axes.flat, panels):
        for (o, d, act, init), rs in runs.items():
            if o == opt and d == depth and (init == USUAL_INIT[act] or act == "relu"):
                _per_seed(ax, rs, "eval_accuracy",
                          f"{act}, {init} (lr {rs[0].config.optimizer.learning_rate:g})",
                          COLORS[act], STYLES[init])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"depth {depth}, {'SGD + momentum 0.9' if opt == 'sgd' else 'Adam'}",
                     fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=6.5, loc="lower right", title="activation, init (its rate)",
                  title_fontsize=6.5)
    fig.suptitle("Learning curves on digits: every seed, each arm at its own rate\n"
                 "(x: a seed that diverged)", fontsize=10)
    study.figure(fig, "learning_curves.png",
                 "Validation accuracy during training, one line per seed; a seed that "
                 "diverged ends in an x where it stopped.")


def _setup(study, s) -> str:
    return (
        f"scikit-learn's digits (1,257 training, 180 validation images of 8x8). MLPs of width "
        f"{WIDTH} and depth {', '.join(map(str, s['depths']))} (hidden layers), no dropout, "
        f"each activation under LeCun (variance 1/fan_in), Glorot (2/(fan_in+fan_out)) and He "
        f"(2/fan_in) initialisation. SGD with momentum 0.9, constant learning rate, batch "
        f"{BATCH}, {s['steps']} steps. "
        + (f"Adam with each activation's usual initialisation (Glorot for sigmoid and tanh, He "
           f"for ReLU and GELU) at depths {', '.join(map(str, s['adam_depths']))}. "
           if s["adam_depths"] else "")
        + "**Each arm's learning rate** (one per optimizer, depth, activation and "
          "initialisation) is the one of "
        + "; ".join(f"{', '.join(f'{r:g}' for r in rates)} ({'SGD' if o == 'sgd' else 'Adam'})"
                    for o, rates in s["rates"].items())
        + f" with the lowest final validation loss averaged over the seeds (a rate where any "
          f"seed diverged loses), {extending(s['extensions'])}; the table gives "
          f"each arm's rate and flags one still at an edge. An arm's outcome is often all or "
          f"nothing, so the table also counts the seeds that train (final validation accuracy "
          f"at least {TRAINS}). Comparisons pair seed i of one arm with seed i of another and "
          f"apply a two-sided paired t-test to the final validation accuracy (0 for a "
          f"diverged run): \"beats\" only where p < 0.05, else \"tie\". "
        + f"Every layer's gradient norm is logged by the toolkit (`log.layer_grad_norms`) "
          f"every 25 steps; the value at step 1 is the gradient at initialisation on the first "
          f"batch. Seeds {', '.join(map(str, study.seeds))} change the initial weights and the "
          f"batch order.")


def _tables(data, s) -> list[Table]:
    rows = []
    for r in data["runs"]:
        diverged = sum(r["diverged"])
        rows.append([r["optimizer"], r["depth"], r["activation"], r["init"],
                     f"{r['learning_rate']:g}" + (" (edge)" if r["rate_at_edge"] else ""),
                     f"{np.mean(r['first_layer_grad_at_init']):.1e}",
                     spread(r["final_val_accuracy"])
                     + (f" ({diverged} diverged)" if diverged else ""),
                     f"{r['trained']}/{len(r['diverged'])}"])
    return [Table("Final validation accuracy and the first layer's gradient norm at "
                  "initialisation (mean; accuracy: mean (min-max) over seeds, 0 for a "
                  "diverged run), each arm at its own learning rate",
                  ["optimizer", "depth", "activation", "init", "learning rate",
                   "first-layer gradient at init", "validation accuracy",
                   f"seeds that train (accuracy >= {TRAINS})"], rows)]


def _versus(by_key, a, b) -> str:
    """'relu-he beats tanh-glorot (paired t-test ...)' for two arms' final accuracies."""
    c = compare(by_key[a]["final_val_accuracy"], by_key[b]["final_val_accuracy"],
                lower_is_better=False)
    return c.words(f"{a[2]}-{a[3]}", f"{b[2]}-{b[3]}")


def _meaning(by_key, s) -> str:
    """What the measurements say about the claim, each statement worded by its numbers."""
    def acc(opt, depth, act, init):
        return spread(by_key[opt, depth, act, init]["final_val_accuracy"])

    def outcome(opt, depth, act, init):
        r = by_key[opt, depth, act, init]
        a, diverged = np.mean(r["final_val_accuracy"]), sum(r["diverged"])
        verb = ("trains to" if a >= 0.9 else "stays at chance," if a <= 0.2 else "only reaches")
        return (f"{verb} {acc(opt, depth, act, init)} at lr {r['learning_rate']:g} "
                f"({r['trained']} of {len(r['diverged'])} seeds train"
                + (f", {diverged} diverged)" if diverged else ")"))

    def decay(depth, act, init):  # first layer's gradient over the head's, at initialisation
        grads = np.mean(by_key["sgd", depth, act, init]["layer_grad_at_init"], axis=0)
        return grads[0] / grads[-1]

    def first(depth, act, init):
        return np.mean(by_key["sgd", depth, act, init]["first_layer_grad_at_init"])

    deep, mid = max(s["depths"]), 10
    text = (
        f"The vanishing gradient is real, and it is the sigmoid's: at initialisation its "
        f"first layer's gradient is {decay(mid, 'sigmoid', 'glorot'):.0e} of the output "
        f"layer's at depth {mid} and {decay(deep, 'sigmoid', 'glorot'):.0e} at depth {deep}, "
        f"whatever the initialisation, and under SGD the sigmoid net "
        + _sigmoid_outcomes(by_key, s["depths"], outcome)
        + ". But the article's contrast is too simple. tanh, the other saturating function, "
        f"{outcome('sgd', deep, 'tanh', 'glorot')} at depth {deep} with Glorot "
        f"initialisation: zero-centred with slope 1 at the origin, it passes gradients back "
        f"undiminished when the weights are scaled to match. ReLU's gradient does not shrink "
        f"from layer to layer (first layer over output layer at depth {deep}: "
        f"{decay(deep, 'relu', 'lecun'):.1f} with LeCun, {decay(deep, 'relu', 'he'):.1f} with "
        f"He); instead LeCun's variance halves the signal at every layer, so all of a "
        f"{deep}-layer net's gradients start small ({first(deep, 'relu', 'lecun'):.0e} at "
        f"the first layer against {first(deep, 'relu', 'he'):.1f} with He). He's "
        f"initialisation keeps them level. At depth {deep}, each at its own rate, ReLU-He "
        f"{outcome('sgd', deep, 'relu', 'he')} and ReLU-LeCun "
        f"{outcome('sgd', deep, 'relu', 'lecun')}: "
        + _versus(by_key, ("sgd", deep, "relu", "he"), ("sgd", deep, "relu", "lecun"))
        + "; against tanh with Glorot, "
        + _versus(by_key, ("sgd", deep, "relu", "he"), ("sgd", deep, "tanh", "glorot"))
        + f". GELU, close to x/2 near "
        f"zero, shrinks a small signal at every layer: at depth {deep} with LeCun "
        f"initialisation its first-layer gradient is "
        f"{first(deep, 'gelu', 'lecun'):.0e} and it {outcome('sgd', deep, 'gelu', 'lecun')}.")
    if ("adam", mid, "sigmoid", "glorot") in by_key and ("adam", deep, "relu", "he") in by_key:
        adam_vs_sgd = compare(by_key["adam", deep, "relu", "he"]["final_val_accuracy"],
                              by_key["sgd", deep, "relu", "he"]["final_val_accuracy"],
                              lower_is_better=False).words("Adam", "SGD")
        text += (
            f" Adam, which divides each step by the gradient's running size, lifts the "
            f"{mid}-layer sigmoid net from chance to {acc('adam', mid, 'sigmoid', 'glorot')}, "
            f"still far from trained; the {deep}-layer sigmoid's gradient of "
            f"{first(deep, 'sigmoid', 'glorot'):.0e} is beyond even Adam "
            f"({acc('adam', deep, 'sigmoid', 'glorot')}). On ReLU-He at depth {deep}, each "
            f"optimizer at its own rate, {adam_vs_sgd} ({acc('adam', deep, 'relu', 'he')} "
            f"against {acc('sgd', deep, 'relu', 'he')})"
            + (f": an earlier version of this study ran every arm at one SGD rate, found "
               f"ReLU-He failing at depth {deep} and credited Adam; its own rate was the fix."
               if by_key["sgd", deep, "relu", "he"]["trained"] == len(
                   by_key["sgd", deep, "relu", "he"]["diverged"]) else "."))
    return text


def _sigmoid_outcomes(by_key, depths, outcome) -> str:
    final = [np.mean(by_key["sgd", d, "sigmoid", "glorot"]["final_val_accuracy"])
             for d in depths]
    if all(a <= 0.2 for a in final):
        return (f"stays at chance at every depth tried (validation accuracy "
                f"{', '.join(f'{a:.2f}' for a in final)} at depths "
                f"{', '.join(map(str, depths))})")
    return ", ".join(f"{outcome('sgd', d, 'sigmoid', 'glorot')} at depth {d}" for d in depths)


def _literature(by_key, s) -> list[Cited]:
    deep, mid = max(s["depths"]), 10

    def acc(opt, depth, act, init):
        r = by_key[opt, depth, act, init]
        return (f"{np.mean(r['final_val_accuracy']):.2f} ({r['trained']}/{len(r['diverged'])} "
                f"seeds train)")

    def verdict(a, b):
        return compare(by_key[a]["final_val_accuracy"], by_key[b]["final_val_accuracy"],
                       lower_is_better=False).verdict

    sigmoid_stuck = all(np.mean(by_key["sgd", d, "sigmoid", "glorot"]["final_val_accuracy"])
                        <= 0.2 for d in s["depths"] if d >= mid)
    he_vs_glorot = verdict(("sgd", deep, "relu", "he"), ("sgd", deep, "relu", "glorot"))
    tanh_ok = np.mean(by_key["sgd", deep, "tanh", "glorot"]["final_val_accuracy"]) >= 0.9
    return [
        Cited("Glorot & Bengio 2010",
              "with the usual initialisation, deep sigmoid nets train poorly (the top hidden "
              "layer saturates); tanh and softsign with normalised initialisation train, and "
              "the normalised (Glorot) initialisation keeps gradients level across layers",
              f"sigmoid-Glorot at depth {mid}: {acc('sgd', mid, 'sigmoid', 'glorot')}; "
              f"tanh-Glorot at depth {deep}: {acc('sgd', deep, 'tanh', 'glorot')}",
              ("agrees: " if sigmoid_stuck and tanh_ok else "partly: ")
              + ("sigmoid stays at chance at depth 10 and beyond under SGD, even with Glorot's "
                 "initialisation and its own rate" if sigmoid_stuck else
                 "sigmoid trains at some depth of 10 or more here")
              + ("; tanh with it trains" if tanh_ok else "; tanh with it does not train "
                                                         f"reliably at depth {deep}")),
        Cited("He et al. 2015",
              "their initialisation (2/fan_in) lets a 30-layer ReLU net train from scratch, "
              "where Glorot's initialisation stalls; at 22 layers both converge, He's sooner",
              f"ReLU at depth {deep}: He {acc('sgd', deep, 'relu', 'he')}, Glorot "
              f"{acc('sgd', deep, 'relu', 'glorot')}",
              {"a": "agrees: He beats Glorot at this depth (paired t-test)",
               "b": "disagrees: Glorot beats He here (paired t-test)",
               "tie": "not shown: a tie at this depth (paired t-test)"}[he_vs_glorot]),
    ]
