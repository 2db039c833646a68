"""Activations and vanishing gradients: does ReLU keep gradients alive where sigmoid and tanh
let them die?

MLPs of width 64 and depth 5, 10 and 20 on scikit-learn's digits, with each activation under
each initialisation (LeCun, Glorot, He), trained by SGD with momentum; every layer's gradient
norm is logged from the first step on (`log.layer_grad_norms`). Adam, which rescales each
parameter's step by its gradient's running size, is run beside it at depths 10 and 20.

Larger, on an accelerator: width 256 and depths up to 50 on MNIST (in `settings()`).
"""
import numpy as np
from matplotlib.ticker import MaxNLocator

from experiments.studies.common import Table, band, new_figure, on_grid, spread

TITLE = "Activations and vanishing gradients"
CLAIM = ("ReLU does not saturate, so gradients flow through deep networks; sigmoid and tanh "
         "made them vanish.")
SEEDS = 3

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
INITS = ("lecun", "glorot", "he")
USUAL_INIT = {"sigmoid": "glorot", "tanh": "glorot", "relu": "he", "gelu": "he"}
COLORS = {"sigmoid": "tab:red", "tanh": "tab:orange", "relu": "tab:blue", "gelu": "tab:green"}
STYLES = {"lecun": ":", "glorot": "--", "he": "-"}
SGD_LR, ADAM_LR, BATCH, WIDTH = 0.02, 1e-3, 64, 64


def settings(quick: bool) -> dict:
    if quick:  # the test's claim: depth 10, sigmoid against ReLU under both of its inits
        return dict(depths=(10,), combos=[("sigmoid", "glorot"), ("relu", "lecun"),
                                          ("relu", "he")], adam_depths=(), steps=400)
    return dict(depths=(5, 10, 20), combos=[(a, i) for a in ACTIVATIONS for i in INITS],
                adam_depths=(10, 20), steps=1500)


def run(study) -> dict:
    s = settings(study.quick)
    study.plan(len(study.seeds) * (len(s["depths"]) * len(s["combos"])
                                   + len(s["adam_depths"]) * len(ACTIVATIONS)))
    runs = {}  # (optimizer, depth, activation, init) -> [Run per seed]
    for depth in s["depths"]:
        for act, init in s["combos"]:
            runs["sgd", depth, act, init] = study.train_seeds(
                f"sgd-depth{depth}-{act}-{init}",
                lambda seed: _config(study, depth, act, init, "sgd", s["steps"], seed))
    for depth in s["adam_depths"]:
        for act in ACTIVATIONS:
            init = USUAL_INIT[act]
            runs["adam", depth, act, init] = study.train_seeds(
                f"adam-depth{depth}-{act}-{init}",
                lambda seed: _config(study, depth, act, init, "adam", s["steps"], seed))

    data = {"runs": [_summary(key, rs) for key, rs in runs.items()]}
    _plot_gradients_at_init(study, runs, s["depths"])
    _plot_first_layer_during_training(study, runs, s["depths"], s["steps"])
    _plot_learning_curves(study, runs, s["steps"])

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
            f"depth {deep} it reaches {spread(tanh_deep['final_val_accuracy'])} where ReLU "
            f"with He gets {spread(relu_deep['final_val_accuracy'])}.")
    return {"finding": finding, "setup": _setup(study, s), "tables": _tables(data, s),
            "meaning": _meaning(by_key, s) if not study.quick else "", "data": data}


def _config(study, depth, act, init, optimizer, steps, seed):
    return study.config(
        "digits_mlp.py", **{
            "seed": seed, "model.depth": depth, "model.width": WIDTH, "model.activation": act,
            "model.init": init, "model.dropout": 0.0, "loss.label_smoothing": 0.0,
            "optimizer.name": optimizer, "optimizer.momentum": 0.9,
            "optimizer.learning_rate": SGD_LR if optimizer == "sgd" else ADAM_LR,
            "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
            "dataset.batch_size": BATCH, "steps": steps, "eval_every": steps // 10,
            "checkpoint.every": steps, "log_every": 25, "log.layer_grad_norms": True})


def _layer_keys(depth: int) -> list[str]:
    """The kernels' gradient-norm keys from the input layer to the head."""
    return [f"grad_norm/hidden/{i}/kernel" for i in range(depth)] + ["grad_norm/head/kernel"]


def _summary(key, rs) -> dict:
    optimizer, depth, act, init = key
    first = _layer_keys(depth)[0]
    return {
        "optimizer": optimizer, "depth": depth, "activation": act, "init": init,
        "layer_grad_at_init": [[r.history[0][k] for k in _layer_keys(depth)] for r in rs],
        "first_layer_grad_at_init": [r.history[0][first] for r in rs],
        "first_layer_grad_final": [r.last(first) if not r.diverged else None for r in rs],
        "final_val_accuracy": [r.last("eval_accuracy") if not r.diverged else 0.0 for r in rs],
        "test_accuracy": [r.test["accuracy"] if r.test else None for r in rs],
        "diverged": [bool(r.diverged) for r in rs],
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


def _plot_first_layer_during_training(study, runs, depths, steps):
    shown = [d for d in depths if d >= 10] or list(depths)
    fig, axes = new_figure(len(shown), 1, width=5.2, height=3.9)
    grid = np.arange(25, steps + 1, 25)
    for ax, depth in zip(axes[0], shown):
        for (opt, d, act, init), rs in runs.items():
            if opt == "sgd" and d == depth and (init == USUAL_INIT[act] or act == "relu"):
                ys = on_grid(rs, _layer_keys(depth)[0], grid)
                band(ax, grid, ys, f"{act}, {init}", COLORS[act], STYLES[init])
        ax.set_yscale("log")
        ax.set_title(f"depth {depth}, SGD + momentum, lr {SGD_LR}")
        ax.set_xlabel("training step")
    axes[0, 0].set_ylabel("first layer's gradient norm")
    axes[0, -1].legend(fontsize=8)
    fig.suptitle("The input layer's gradient during training (mean, min-max over seeds)")
    study.figure(fig, "first_layer_gradient.png",
                 "The input layer's gradient norm while training. Where it stays near zero "
                 "the first layer never learns.")


def _plot_learning_curves(study, runs, steps):
    panels = [(opt, depth) for opt in ("sgd", "adam") for depth in (10, 20)
              if any(k[:2] == (opt, depth) for k in runs)]
    cols = 2 if len(panels) > 1 else 1
    fig, axes = new_figure(cols, (len(panels) + cols - 1) // cols, width=5.2, height=3.6)
    grid = np.arange(steps // 10, steps + 1, steps // 10)
    for ax, (opt, depth) in zip(axes.flat, panels):
        for (o, d, act, init), rs in runs.items():
            if o == opt and d == depth and (init == USUAL_INIT[act] or act == "relu"):
                band(ax, grid, on_grid(rs, "eval_accuracy", grid), f"{act}, {init}",
                     COLORS[act], STYLES[init], marker="o")
        ax.set_ylim(0, 1.02)
        lr = SGD_LR if opt == "sgd" else ADAM_LR
        ax.set_title(f"depth {depth}, {'SGD + momentum 0.9' if opt == 'sgd' else 'Adam'}, "
                     f"lr {lr}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation accuracy")
    axes.flat[0].legend(fontsize=8, loc="center right")
    fig.suptitle("Learning curves on digits (mean, min-max over seeds)")
    study.figure(fig, "learning_curves.png",
                 "Validation accuracy during training. Under SGD the sigmoid nets stay at "
                 "chance; at depth 20 only tanh trains reliably at this learning rate"
                 + (", while Adam trains ReLU there." if len(panels) > 2 else "."))


def _setup(study, s) -> str:
    return (
        f"scikit-learn's digits (1,257 training, 180 validation images of 8x8). MLPs of width "
        f"{WIDTH} and depth {', '.join(map(str, s['depths']))} (hidden layers), no dropout, "
        f"each activation under LeCun (variance 1/fan_in), Glorot (2/(fan_in+fan_out)) and He "
        f"(2/fan_in) initialisation. SGD with momentum 0.9, learning rate {SGD_LR} (constant), "
        f"batch {BATCH}, {s['steps']} steps; at lr 0.05 ReLU with He diverged at depth 10 in "
        f"a probe, so the rate is the next one down. "
        + (f"Adam (lr {ADAM_LR}) with each activation's usual initialisation (Glorot for "
           f"sigmoid and tanh, He for ReLU and GELU) at depths "
           f"{', '.join(map(str, s['adam_depths']))}. " if s["adam_depths"] else "")
        + f"Every layer's gradient norm is logged by the toolkit (`log.layer_grad_norms`) "
          f"every 25 steps; the value at step 1 is the gradient at initialisation on the first "
          f"batch. Seeds {', '.join(map(str, study.seeds))} change the initial weights and the "
          f"batch order.")


def _tables(data, s) -> list[Table]:
    rows = []
    for r in data["runs"]:
        diverged = sum(r["diverged"])
        rows.append([r["optimizer"], r["depth"], r["activation"], r["init"],
                     f"{np.mean(r['first_layer_grad_at_init']):.1e}",
                     spread(r["final_val_accuracy"])
                     + (f" ({diverged} diverged)" if diverged else "")])
    return [Table("Final validation accuracy and the first layer's gradient norm at "
                  "initialisation (mean; accuracy: mean (min-max) over seeds, 0 for a "
                  "diverged run)",
                  ["optimizer", "depth", "activation", "init", "first-layer gradient at init",
                   "validation accuracy"], rows)]


def _meaning(by_key, s) -> str:
    """What the measurements say about the claim, each statement worded by its numbers."""
    def acc(opt, depth, act, init):
        return spread(by_key[opt, depth, act, init]["final_val_accuracy"])

    def outcome(opt, depth, act, init):
        r = by_key[opt, depth, act, init]
        a, diverged = np.mean(r["final_val_accuracy"]), sum(r["diverged"])
        verb = ("trains to" if a >= 0.9 else "stays at chance," if a <= 0.2 else "only reaches")
        return f"{verb} {acc(opt, depth, act, init)}" + (
            f" ({diverged} of {len(r['diverged'])} runs diverged)" if diverged else "")

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
        f"initialisation keeps them level, but at depth {deep} that is not enough for SGD at "
        f"the learning rate that suits shallower nets: ReLU-He "
        f"{outcome('sgd', deep, 'relu', 'he')} and ReLU-LeCun "
        f"{outcome('sgd', deep, 'relu', 'lecun')}, while tanh trains. GELU, close to x/2 near "
        f"zero, shrinks a small signal at every layer: at depth {deep} with LeCun "
        f"initialisation its first-layer gradient is "
        f"{first(deep, 'gelu', 'lecun'):.0e} and it {outcome('sgd', deep, 'gelu', 'lecun')}.")
    if ("adam", mid, "sigmoid", "glorot") in by_key and ("adam", deep, "relu", "he") in by_key:
        text += (
            f" The optimizer matters as much as the activation: Adam, which divides each "
            f"step by the gradient's running size, lifts the {mid}-layer sigmoid net from "
            f"chance to {acc('adam', mid, 'sigmoid', 'glorot')} and trains ReLU-He at depth "
            f"{deep} to {acc('adam', deep, 'relu', 'he')}; the {deep}-layer sigmoid's "
            f"gradient of {first(deep, 'sigmoid', 'glorot'):.0e} is beyond even Adam "
            f"({acc('adam', deep, 'sigmoid', 'glorot')}).")
    return text


def _sigmoid_outcomes(by_key, depths, outcome) -> str:
    final = [np.mean(by_key["sgd", d, "sigmoid", "glorot"]["final_val_accuracy"])
             for d in depths]
    if all(a <= 0.2 for a in final):
        return (f"stays at chance at every depth tried (validation accuracy "
                f"{', '.join(f'{a:.2f}' for a in final)} at depths "
                f"{', '.join(map(str, depths))})")
    return ", ".join(f"{outcome('sgd', d, 'sigmoid', 'glorot')} at depth {d}" for d in depths)
