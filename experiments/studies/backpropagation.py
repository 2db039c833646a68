"""Backpropagation is the chain rule: the gradient the toolkit trains with, checked three ways.

In float64 (`jax.enable_x64`): `jax.grad` of the toolkit's MLP and loss against central finite
differences for every parameter; against backpropagation written out by hand in numpy for a
one-hidden-layer net; and one update by the article's formula, weight - learning_rate x
gradient, which is exactly the toolkit's SGD step. At default size it also times one gradient
against one evaluation of the loss, the cost reverse mode is known for.

It compares nothing against anything, so it keeps 3 seeds: each only repeats the checks on
another batch and other initial weights, and a bound that holds on all of them is the finding.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

import data
import nets
from experiments.studies.common import Cited, Table, new_figure, spread
from train.losses import make_task
from train.trainer import Trainer

TITLE = "Backpropagation is the chain rule"
CLAIM = ("The chain rule gives the partial derivative of the loss with respect to every weight "
         "and bias; weight = weight - learning_rate x gradient.")
SEEDS = 3  # a numerical check, not a comparison of arms: the seeds only vary the batch

BATCH, STEP = 32, 1e-6  # finite-difference step: the float64 sweet spot between truncation
LEARNING_RATES = np.logspace(-3, 1.5, 19)  # and rounding error (both ~1e-10 relative here)
EPSILON = float(np.finfo(np.float64).eps)
TIMED_REPEATS = 30  # interleaved evaluations of the loss and of its gradient, at default size


def run(study) -> dict:
    digits = data.load("digits")
    images, labels = digits.splits["train"]["inputs"], digits.splits["train"]["targets"]
    checks = {"finite_differences": [], "by_hand": [], "one_update": [], "sgd_step": []}
    scatter = []
    for seed in study.seeds:
        rows = np.random.default_rng(seed).choice(len(labels), BATCH, replace=False)
        batch = {"inputs": images[rows], "targets": labels[rows]}
        with jax.enable_x64(True):
            for act in ("tanh", "relu"):
                result, points = _against_finite_differences(batch, act, seed)
                checks["finite_differences"].append(result)
                scatter.append((act, points))
            checks["by_hand"].append(_against_numpy_backprop(batch, seed))
            checks["one_update"].append(_one_update(batch, seed))
        checks["sgd_step"].append(_toolkit_sgd_step(study, digits, seed))
        study.say(f"seed {seed}: checked")

    fd = checks["finite_differences"]
    worst_fd = max(r["relative_error"] for r in fd)
    worst_hand = max(max(r["relative_error"].values()) for r in checks["by_hand"])
    worst_sgd = max(r["relative_difference"] for r in checks["sgd_step"])
    small = [r["loss_after"][0] / r["loss_before"] - 1 for r in checks["one_update"]]
    data_out = {**checks, "max_relative_error_finite_differences": worst_fd,
                "max_relative_error_by_hand": worst_hand,
                "max_relative_difference_sgd_step": worst_sgd,
                "learning_rates": LEARNING_RATES.tolist()}
    if not study.quick:
        data_out["cost"] = _gradient_cost(digits)
    _plot_check(study, scatter, checks["by_hand"])
    _plot_update(study, checks["one_update"])
    best = [r["learning_rates"][int(np.argmin(r["loss_after"]))] for r in checks["one_update"]]
    finding = (
        f"jax.grad agrees with central finite differences on all {fd[0]['parameters']:,} "
        f"parameters to a relative error of at most {worst_fd:.1e} and with backpropagation "
        f"written by hand to {worst_hand:.1e} (float64); one update "
        f"w - {LEARNING_RATES[0]:g} x gradient lowers the loss by {spread([-s for s in small])} "
        f"(relative), the loss after one step is lowest near learning rate "
        f"{np.median(best):.2g}, and the toolkit's SGD step is that formula to "
        f"{worst_sgd:.1e}.")
    return {"finding": finding, "setup": _setup(study, fd[0]["parameters"]),
            "tables": _tables(checks), "meaning": _meaning(checks),
            "literature": _literature(data_out) if not study.quick else [], "data": data_out}


def _mlp(depth: int, width: int, act: str, seed: int):
    """The toolkit's MLP in float64: (graphdef, float64 params, rest of the state)."""
    model = nets.build("mlp", input_shape=(8, 8, 1), num_classes=10, seed=seed, depth=depth,
                       width=width, activation=act, dtype="float64")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, jax.tree.map(lambda p: p.astype(jnp.float64), params), rest


def _loss_fn(graphdef, rest, batch):
    """The mean of the toolkit's cross-entropy, as the training step takes it."""
    loss = make_task("classification", "cross_entropy").loss
    x, y = jnp.asarray(batch["inputs"], jnp.float64), jnp.asarray(batch["targets"])
    return lambda params: jnp.mean(loss(nnx.merge(graphdef, params, rest)(x), y))


def _against_finite_differences(batch, act: str, seed: int):
    graphdef, params, rest = _mlp(2, 16, act, seed)
    loss_of = _loss_fn(graphdef, rest, batch)
    theta, unravel = ravel_pytree(params)
    grad = ravel_pytree(jax.grad(loss_of)(params))[0]
    flat_loss = jax.jit(jax.vmap(lambda t: loss_of(unravel(t))))
    eye = jnp.eye(theta.size, dtype=jnp.float64) * STEP
    fd = (flat_loss(theta + eye) - flat_loss(theta - eye)) / (2 * STEP)
    grad, fd = np.asarray(grad), np.asarray(fd)
    loss = float(loss_of(params))
    result = {"loss": loss,
              # rounding in L(w+h) - L(w-h), about epsilon |L| each, divided by 2h
              "rounding_error_scale": EPSILON * abs(loss) / STEP,
              "evaluations": 2 * int(theta.size),
              "activation": act, "seed": seed, "parameters": int(theta.size),
              "relative_error": float(np.linalg.norm(grad - fd) / np.linalg.norm(grad)),
              "max_abs_error": float(np.max(np.abs(grad - fd))),
              "max_abs_gradient": float(np.max(np.abs(grad)))}
    return result, (grad, fd)


def _against_numpy_backprop(batch, seed: int) -> dict:
    """x -> h = x W1 + b1 -> a = relu(h) -> z = a W2 + b2 -> softmax cross-entropy, backwards."""
    graphdef, params, rest = _mlp(1, 32, "relu", seed)
    grads = jax.grad(_loss_fn(graphdef, rest, batch))(params)
    w1, b1 = (np.asarray(params["hidden"][0][k][...]) for k in ("kernel", "bias"))
    w2, b2 = (np.asarray(params["head"][k][...]) for k in ("kernel", "bias"))
    x = batch["inputs"].reshape(BATCH, -1).astype(np.float64)
    h = x @ w1 + b1
    a = np.maximum(h, 0)
    z = a @ w2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(10)[batch["targets"]]) / BATCH  # d mean(-log p_y) / dz
    da = dz @ w2.T
    dh = da * (h > 0)                                # relu's derivative
    by_hand = {"hidden/0/kernel": x.T @ dh, "hidden/0/bias": dh.sum(0),
               "head/kernel": a.T @ dz, "head/bias": dz.sum(0)}
    by_jax = {"hidden/0/kernel": grads["hidden"][0]["kernel"][...],
              "hidden/0/bias": grads["hidden"][0]["bias"][...],
              "head/kernel": grads["head"]["kernel"][...], "head/bias": grads["head"]["bias"][...]}
    return {"seed": seed, "relative_error": {
        k: float(np.linalg.norm(by_hand[k] - np.asarray(by_jax[k]))
                 / max(np.linalg.norm(by_hand[k]), 1e-300)) for k in by_hand}}


def _one_update(batch, seed: int) -> dict:
    """The loss on the same batch after w <- w - lr * dL/dw, for a range of learning rates."""
    graphdef, params, rest = _mlp(2, 16, "relu", seed)
    loss_of = jax.jit(_loss_fn(graphdef, rest, batch))
    grads = jax.grad(loss_of)(params)
    before = float(loss_of(params))
    after = [float(loss_of(jax.tree.map(lambda w, g: w - lr * g, params, grads)))
             for lr in LEARNING_RATES]
    return {"seed": seed, "loss_before": before, "loss_after": after,
            "learning_rates": LEARNING_RATES.tolist(),
            "gradient_norm_squared": float(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))}


def _gradient_cost(digits) -> dict:
    """Seconds for one evaluation of the loss and for its value and gradient by reverse mode,
    the medians of TIMED_REPEATS interleaved calls, on a net and batch large enough to time:
    the 2x512 MLP of the other studies on all 1,257 training images, in float32."""
    model = nets.build("mlp", input_shape=digits.input_shape, num_classes=10, seed=0, depth=2,
                       width=512)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = digits.splits["train"]
    x, y = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    loss = make_task("classification", "cross_entropy").loss

    def loss_of(p):
        return jnp.mean(loss(nnx.merge(graphdef, p, rest)(x), y))

    forward, backward = jax.jit(loss_of), jax.jit(jax.value_and_grad(loss_of))
    jax.block_until_ready((forward(params), backward(params)))  # compiled before timing
    seconds = {"loss": [], "gradient": []}
    for _ in range(TIMED_REPEATS):
        for name, f in (("loss", forward), ("gradient", backward)):
            start = time.perf_counter()
            jax.block_until_ready(f(params))
            seconds[name].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    return {"parameters": int(ravel_pytree(params)[0].size), "examples": int(len(y)),
            "loss_s": median["loss"], "gradient_s": median["gradient"],
            "ratio": median["gradient"] / median["loss"]}


def _toolkit_sgd_step(study, digits, seed: int) -> dict:
    """One step of the toolkit's trainer with plain SGD against the formula, in float32."""
    lr = 0.1
    config = study.config("digits_mlp.py", **{
        "seed": seed, "model.dropout": 0.0, "loss.label_smoothing": 0.0, "model.width": 16,
        "optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.learning_rate": lr,
        "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
        "dataset.batch_size": BATCH})
    model = nets.build("mlp", input_shape=digits.input_shape, num_classes=10, seed=seed,
                       depth=config.model.depth, width=16)
    trainer = Trainer(config, model, digits)
    batch = next(digits.train_batches(BATCH, seed=seed, epoch=0))
    state = trainer.initial_state
    grads = trainer.gradients(state, batch)
    formula = jax.tree.map(lambda w, g: w - lr * g, state.params, grads)
    stepped, _ = trainer.train_step(jax.tree.map(jnp.copy, state), trainer.put(batch))
    a, b = ravel_pytree(formula)[0], ravel_pytree(stepped.params)[0]
    return {"seed": seed, "learning_rate": lr,
            "relative_difference": float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))}


def _plot_check(study, scatter, by_hand):
    fig, axes = new_figure(2, 1, width=5.0, height=4.0)
    ax = axes[0, 0]
    for act, color in (("tanh", "tab:orange"), ("relu", "tab:blue")):
        grad = np.concatenate([g for a, (g, _) in scatter if a == act])
        fd = np.concatenate([f for a, (_, f) in scatter if a == act])
        keep = (np.abs(grad) > 0) & (np.abs(fd) > 0)
        ax.loglog(np.abs(fd[keep]), np.abs(grad[keep]), ".", color=color, markersize=2,
                  alpha=0.5, label=f"{act}: {keep.sum():,} nonzero partial derivatives")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="equal")
    ax.set_xlabel("|central finite difference|  (dL/dw, float64)")
    ax.set_ylabel("|jax.grad|  (dL/dw)")
    ax.set_title("Every parameter of a 2x16 MLP, all seeds")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    names = list(by_hand[0]["relative_error"])
    errors = np.array([[r["relative_error"][k] for k in names] for r in by_hand])
    for i, row in enumerate(errors):  # points, not bars: the axis is logarithmic
        ax.plot(np.arange(len(names)) + 0.08 * (i - (len(errors) - 1) / 2),
                np.maximum(row, EPSILON / 10), "o", color="tab:blue", markersize=5,
                alpha=0.8, label="each seed" if i == 0 else None)
    ax.axhline(1e-6, color="tab:red", linestyle="--", label="test threshold 1e-6")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("relative error, hand backprop vs jax.grad")
    ax.set_title("Backpropagation written out in numpy")
    ax.legend(fontsize=8)
    fig.suptitle("The toolkit's gradient, checked (float64)")
    study.figure(fig, "gradient_check.png",
                 "Left: jax.grad against central finite differences for every weight and bias "
                 "(points on the diagonal agree). Right: the relative difference to "
                 "backpropagation written by hand, per array and seed (an exact 0 is drawn at "
                 "eps/10).")


def _plot_update(study, updates):
    fig, axes = new_figure(1, 1, width=6.4, height=4.2)
    ax = axes[0, 0]
    for r, color in zip(updates, ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
        lrs = np.array(r["learning_rates"])
        ax.semilogx(lrs, r["loss_after"], "o-", color=color, markersize=3,
                    label=f"seed {r['seed']}: loss after one update")
        ax.axhline(r["loss_before"], color=color, linestyle=":", linewidth=1)
        tangent = r["loss_before"] - lrs * r["gradient_norm_squared"]
        ax.semilogx(lrs, tangent, "--", color=color, linewidth=0.8, alpha=0.7)
    lowest = min(min(r["loss_after"]) for r in updates)
    highest = max(r["loss_before"] for r in updates)
    ax.set_ylim(lowest - 0.3 * (highest - lowest), highest + 0.8 * (highest - lowest))
    ax.set_xlabel("learning rate in  w <- w - learning_rate x gradient")
    ax.set_ylabel("cross-entropy on the batch (nats)")
    ax.set_title("One gradient step: the loss falls, until the step is too long")
    ax.plot([], [], "k:", label="loss before the update")
    ax.plot([], [], "k--", label="first-order prediction  L - lr ||g||^2")
    ax.legend(fontsize=8)
    study.figure(fig, "one_update.png",
                 "The loss on a batch of 32 digits after one update, against the learning "
                 "rate: it follows the first-order prediction for small steps, then overshoots.")


def _setup(study, parameters: int) -> str:
    return (
        f"A batch of {BATCH} training digits per seed (seeds "
        f"{', '.join(map(str, study.seeds))} draw the batch and the initial weights). "
        f"Finite differences: the toolkit's MLP with 2 hidden layers of 16 ({parameters:,} "
        f"weights and biases), tanh and ReLU, the toolkit's cross-entropy, in float64 "
        f"(`jax.enable_x64`, `model.dtype=float64`); every parameter is moved by +-{STEP:g} "
        f"and (L(w+h) - L(w-h)) / 2h compared with jax.grad, as the norm of the difference over "
        f"the norm of the gradient. By hand: a net with one hidden ReLU layer of 32, its "
        f"backward pass written in numpy (dz = (p - onehot)/B, dW2 = a^T dz, da = dz W2^T, "
        f"dh = da * [h > 0], dW1 = x^T dh), compared array by array. One update: the loss on "
        f"the same batch after w <- w - lr g for {len(LEARNING_RATES)} learning rates from "
        f"{LEARNING_RATES[0]:g} to {LEARNING_RATES[-1]:.3g}. The toolkit's step: one "
        f"`Trainer.train_step` with plain SGD (lr 0.1, float32) against "
        f"`params - 0.1 * Trainer.gradients(...)`.")


def _tables(checks) -> list[Table]:
    fd_rows = [[r["activation"], r["seed"], f"{r['parameters']:,}", f"{r['relative_error']:.1e}",
                f"{r['max_abs_error']:.1e}", f"{r['rounding_error_scale']:.1e}",
                f"{r['max_abs_gradient']:.2g}"]
               for r in checks["finite_differences"]]
    hand = checks["by_hand"]
    hand_rows = [[k, f"{max(r['relative_error'][k] for r in hand):.1e}"]
                 for k in hand[0]["relative_error"]]
    return [Table("jax.grad against central finite differences (float64)",
                  ["activation", "seed", "parameters", "relative error", "max abs error",
                   "rounding scale eps x L / h", "max abs gradient"], fd_rows),
            Table("jax.grad against backpropagation by hand (worst over seeds)",
                  ["array", "relative error"], hand_rows)]


def _meaning(checks) -> str:
    tangent_ok = all(r["loss_after"][0] < r["loss_before"] for r in checks["one_update"])
    return (
        "The claim holds exactly as stated. The gradient a training step uses is the chain "
        "rule applied to every weight and bias: it matches a derivative taken by perturbing "
        "each parameter alone, and a backward pass written out by hand, to within the "
        "rounding of float64 arithmetic. The update is the article's formula: "
        + ("a small step always lowered the loss" if tangent_ok else
           "a small step did not always lower the loss (see the table)")
        + ", by the amount the first-order prediction L - lr ||g||^2 gives, and a long step "
        "overshoots and raises it, which is the learning-rate trade-off in one picture. The "
        "toolkit's SGD step is the same formula; momentum, Adam and the others change what is "
        "subtracted, not how the gradient is found.")


def _literature(d) -> list[Cited]:
    fd, cost = d["finite_differences"], d["cost"]
    worst = max(r["max_abs_error"] / r["rounding_error_scale"] for r in fd)
    best = min(r["max_abs_error"] / r["rounding_error_scale"] for r in fd)
    return [
        Cited("Rumelhart, Hinton & Williams 1986",
              "back-propagation: the error derivative of every weight, layer by layer from the "
              "output backwards by the chain rule, then a step down the gradient",
              f"jax.grad against a backward pass written out by hand: "
              f"{d['max_relative_error_by_hand']:.1e} relative; against finite differences on all "
              f"{fd[0]['parameters']:,} parameters: "
              f"{d['max_relative_error_finite_differences']:.1e}",
              "agrees: the toolkit's gradient is that computation, to float64 rounding"),
        Cited("Baydin, Pearlmutter, Radul & Siskind 2018",
              "reverse mode gives the whole gradient of a scalar function for a small constant "
              "multiple of the cost of evaluating the function, whatever the number of "
              "inputs; finite differences need evaluations in proportion to the inputs",
              f"value and gradient of the 2x512 MLP's loss on {cost['examples']:,} images "
              f"({cost['parameters']:,} parameters): {1e3 * cost['gradient_s']:.1f} ms against "
              f"{1e3 * cost['loss_s']:.1f} ms for the loss alone ({cost['ratio']:.1f}x; median "
              f"of {TIMED_REPEATS}); the finite-difference check took "
              f"{fd[0]['evaluations']:,} evaluations for {fd[0]['parameters']:,} parameters",
              f"agrees: one gradient cost {cost['ratio']:.1f} evaluations of the loss"
              if cost["ratio"] < 10 else
              "disagrees: the gradient cost more than 10 evaluations here"),
        Cited("Press et al., Numerical Recipes (3rd ed. 2007), section 5.7",
              "a central difference's error is truncation, ~h^2, plus rounding, ~eps x f / h; "
              "the best step is h ~ eps^(1/3), for a relative error ~eps^(2/3)",
              f"h = {STEP:g} (eps^(1/3) = {EPSILON ** (1 / 3):.0e}): the largest error on any "
              f"parameter is {best:.1f} to {worst:.1f} times eps x L / h "
              f"(= {fd[0]['rounding_error_scale']:.1e} for seed {fd[0]['seed']})",
              "agrees: at this step the differences are as exact as float64 rounding allows"
              if worst < 10 else "disagrees: the error exceeds the rounding scale"),
    ]
