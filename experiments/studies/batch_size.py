"""The batch size: what a bigger mini-batch buys (a cleaner gradient, more examples per
second) and what it costs (fewer updates per epoch).

The digits MLP is trained with Adam at batch sizes 32 to 512 for the same number of epochs,
once at one learning rate for all and once with the rate scaled by sqrt(B). At fixed
parameters (initialisation, and the end of the batch-32 run) the mini-batch gradient's squared
distance from the full-training-set gradient is averaged over many mini-batches drawn as
training draws them, with `Trainer.gradients`.

Larger, on an accelerator: batches up to 4,096 on MNIST, to find where throughput stops
growing once the device is full.
"""
import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib.ticker import FuncFormatter

from experiments import run as run_api
from experiments.studies.common import Table, band, new_figure, on_grid, spread
from train.trainer import Trainer

TITLE = "The batch size"
CLAIM = ("Mini-batches of 32-512 balance computational efficiency with gradient-estimate "
         "quality.")
SEEDS = 3

BATCH_SIZES = (32, 64, 128, 256, 512)
LEARNING_RATE, WIDTH, TARGET = 1e-3, 512, 0.95
# how the learning rate follows the batch size: not at all, or by the square-root rule for
# Adam (Malladi et al. 2022), which keeps the update's noise scale as the gradient noise shrinks
POLICIES = {"fixed": lambda b: LEARNING_RATE,
            "sqrt": lambda b: LEARNING_RATE * (b / BATCH_SIZES[0]) ** 0.5}
POLICY_NAMES = {"fixed": f"lr {LEARNING_RATE:g} at every batch size",
                "sqrt": f"lr {LEARNING_RATE:g}·sqrt(B/{BATCH_SIZES[0]})"}
COLORS = dict(zip(BATCH_SIZES, ("tab:purple", "tab:blue", "tab:green", "tab:orange",
                                "tab:red")))


def settings(quick: bool) -> dict:
    if quick:  # the test's claims: the variance's slope at initialisation, the throughput
        return dict(epochs=4, batches=32, policies=("fixed",), where=("init",),
                    trained_sizes=(32, 128, 512))
    return dict(epochs=20, batches=96, policies=tuple(POLICIES), where=("init", "trained"),
                trained_sizes=BATCH_SIZES)


def run(study) -> dict:
    s = settings(study.quick)
    n = run_api.build(_config(study, BATCH_SIZES[0], LEARNING_RATE, 1, 0, 1)
                      )[1].num_examples("train")
    sizes = s["trained_sizes"]
    study.plan(len(study.seeds) * (len(sizes) * len(s["policies"]) - len(s["policies"]) + 1))
    runs = {}
    for p in s["policies"]:
        for b in sizes:
            same = [k for k in runs if k[1] == b and POLICIES[k[0]](b) == POLICIES[p](b)]
            runs[p, b] = runs[same[0]] if same else [  # the same rate is not trained twice
                study.train(f"{p}-batch{b}-seed{seed}",
                            _config(study, b, POLICIES[p](b), s["epochs"], seed, n // b),
                            test=False) for seed in study.seeds]
    study.say(f"gradient variance over {s['batches']} mini-batches per batch size")
    variance = {where: [] for where in s["where"]}
    for i, seed in enumerate(study.seeds):
        config = _config(study, BATCH_SIZES[0], LEARNING_RATE, s["epochs"], seed,
                         n // BATCH_SIZES[0])
        model, dataset = run_api.build(config)
        fresh = Trainer(config, model, dataset)
        variance["init"].append(_variances(fresh, fresh.initial_state, dataset, seed,
                                           s["batches"]))
        if "trained" in variance:
            trained = runs["fixed", BATCH_SIZES[0]][i].summary
            variance["trained"].append(_variances(trained["trainer"], trained["state"],
                                                  dataset, seed, s["batches"]))

    data = {"batch_sizes": list(BATCH_SIZES), "trained_batch_sizes": list(sizes),
            "epochs": s["epochs"], "target": TARGET, "train_examples": n,
            "expected_slope": _slope(BATCH_SIZES, _expected(1.0, n)),
            # per batch size, per seed: the median training window of both policies' runs
            "examples_per_s": [[_throughput([runs[p, b][i] for p in s["policies"]])
                                for i in range(len(study.seeds))] for b in sizes],
            "runs": [_summary(p, b, rs) for (p, b), rs in runs.items()]}
    for where, rows in variance.items():
        data[f"variance_{where}"] = rows
        data[f"slope_{where}"] = [_slope(BATCH_SIZES, row) for row in rows]
        data[f"per_example_variance_{where}"] = [_fit_per_example(row, n) for row in rows]
    _plot_variance(study, data, s["where"])
    _plot_efficiency(study, data, s["policies"])
    _plot_accuracy(study, runs, s)

    return {"finding": _finding(data), "setup": _setup(study, s, n), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "", "data": data}


def _finding(data) -> str:
    n, sizes = data["train_examples"], data["trained_batch_sizes"]
    speed = [np.mean(x) for x in data["examples_per_s"]]
    text = (
        f"From batch {sizes[0]} to {sizes[-1]} the mini-batch gradient's variance falls with "
        f"log-log slope {spread(data['slope_init'])} at initialisation (1/B is -1; drawing "
        f"without replacement from {n:,} examples predicts {data['expected_slope']:.2f}) and "
        f"throughput rises {speed[-1] / speed[0]:.1f}x ({speed[0]:,.0f} to {speed[-1]:,.0f} "
        f"examples/s)")
    runs = {(r["policy"], r["batch_size"]): r for r in data["runs"]}
    small, large = runs["fixed", sizes[0]], runs["fixed", sizes[-1]]
    scaled = runs.get(("sqrt", sizes[-1]))
    if None not in small["steps_to_target"] + large["steps_to_target"]:
        text += (f"; the steps to {TARGET:.0%} validation accuracy fall from "
                 f"{np.mean(small['steps_to_target']):.0f} to "
                 f"{np.mean(large['steps_to_target']):.0f}")
        if scaled and None not in scaled["steps_to_target"]:
            text += (f" ({np.mean(scaled['steps_to_target']):.0f} with the learning rate "
                     f"scaled by sqrt(B))")
        text += (f", and the seconds to get there go from "
                 f"{np.mean(small['seconds_to_target']):.2f} to "
                 f"{np.mean(large['seconds_to_target']):.2f}")
        if scaled and None not in scaled["seconds_to_target"]:
            text += f" ({np.mean(scaled['seconds_to_target']):.2f} with the scaled rate)"
    return text + (f"; after {data['epochs']} epochs validation accuracy is "
                   f"{spread(small['final_val_accuracy'])} at batch {sizes[0]} and "
                   f"{spread(large['final_val_accuracy'])} at {sizes[-1]}.")


def _config(study, batch, lr, epochs, seed, steps_per_epoch):
    return study.config(
        "digits_mlp.py", **{
            "seed": seed, "model.width": WIDTH, "model.dropout": 0.0,
            "loss.label_smoothing": 0.0, "optimizer.name": "adam",
            "optimizer.learning_rate": lr, "optimizer.schedule": "constant",
            "optimizer.warmup_steps": 0, "dataset.batch_size": batch, "epochs": epochs,
            # about four evaluations per epoch, so the step that reaches the target is known
            "eval_every": max(1, steps_per_epoch // 4), "log_every": 10,
            "checkpoint.every": epochs * steps_per_epoch})  # only the last step


def _variances(trainer, state, dataset, seed, count) -> list[float]:
    """E||g_B - g||^2 for each batch size: the mean over `count` mini-batches, drawn epoch by
    epoch without replacement as training draws them, of the squared distance between the
    mini-batch gradient and the full-training-set gradient g, at fixed parameters `state`."""
    n = dataset.num_examples("train")
    full = next(iter(dataset.train_batches(n, seed=seed, epoch=0)))
    g = np.asarray(ravel_pytree(trainer.gradients(state, full))[0])
    out = []
    for b in BATCH_SIZES:
        distances, epoch = [], 0
        while len(distances) < count:
            for batch in dataset.train_batches(b, seed=seed, epoch=1000 + epoch):
                g_b = np.asarray(ravel_pytree(trainer.gradients(state, batch))[0])
                distances.append(float(np.sum((g_b - g) ** 2)))
                if len(distances) == count:
                    break
            epoch += 1
        out.append(float(np.mean(distances)))
    return out


def _expected(per_example: float, n: int) -> np.ndarray:
    """The variance of a mean of B examples drawn without replacement from n: s^2/B (n-B)/(n-1)."""
    b = np.array(BATCH_SIZES, dtype=float)
    return per_example / b * (n - b) / (n - 1)


def _fit_per_example(variances, n) -> float:
    """The per-example variance s^2 that best fits the measured points under `_expected`
    (least squares in log space)."""
    return float(np.exp(np.mean(np.log(variances) - np.log(_expected(1.0, n)))))


def _slope(batch_sizes, values) -> float:
    return float(np.polyfit(np.log(batch_sizes), np.log(values), 1)[0])


def _throughput(rs) -> float:
    """Examples per second: the median over every training window of these runs (other
    processes on the machine make some windows slow; evaluation and compilation excluded)."""
    return float(np.median(np.concatenate([r.curve("examples_per_s")[1] for r in rs])))


def _summary(policy, b, rs) -> dict:
    def reached(r):
        """The first evaluated step at or above the target, and the seconds it takes at the
        run's median time per step (other processes on the machine pause some windows)."""
        steps, acc = r.curve("eval_accuracy")
        hit = np.flatnonzero(acc >= TARGET)
        if not len(hit):
            return None, None
        step = int(steps[hit[0]])
        return step, step * float(np.median(b / r.curve("examples_per_s")[1]))

    hits = [reached(r) for r in rs]
    return {
        "policy": policy, "batch_size": b, "learning_rate": rs[0].config.optimizer.learning_rate,
        "steps": [int(r.history[-1]["step"]) for r in rs],
        "steps_to_target": [h[0] for h in hits],
        "seconds_to_target": [h[1] for h in hits],
        "final_val_accuracy": [r.last("eval_accuracy") for r in rs],
        "final_val_loss": [r.last("eval_loss") for r in rs],
    }


def _seed_rows(runs, key):
    """One row per seed over the batch sizes, NaN where a run has no value (target missed)."""
    return np.array([[np.nan if r[key][i] is None else r[key][i] for r in runs]
                     for i in range(len(runs[0][key]))], dtype=float)


def _plot_variance(study, data, where_measured):
    fig, axes = new_figure(1, 1, width=6.2, height=4.2)
    ax = axes[0, 0]
    b, n = np.array(data["batch_sizes"]), data["train_examples"]
    for where, color, marker in (("init", "tab:blue", "o"), ("trained", "tab:orange", "s")):
        if where not in where_measured:
            continue
        label = ("at initialisation" if where == "init" else
                 f"after {data['epochs']} epochs at batch {b[0]}")
        band(ax, b, data[f"variance_{where}"],
             f"{label} (slope {np.mean(data[f'slope_{where}']):.2f})", color, marker=marker)
        s2 = np.mean(data[f"per_example_variance_{where}"])
        ax.plot(b, s2 / b, ":", color=color, linewidth=1)
        ax.plot(b, _expected(s2, n), "--", color=color, linewidth=1)
    ax.plot([], [], "k:", linewidth=1, label="s²/B (slope -1)")
    ax.plot([], [], "k--", linewidth=1,
            label=f"s²/B·(N-B)/(N-1), N = {n:,} (slope {data['expected_slope']:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(b, [str(x) for x in b])
    ax.set_xlabel("batch size B (examples)")
    ax.set_ylabel("E ||g_B - g||²  (squared gradient norm)")
    ax.legend(fontsize=7.5, loc="lower left")
    ax.set_title("Variance of the mini-batch gradient around the full-batch gradient\n"
                 "(digits MLP, fixed parameters; mean, min-max over seeds)", fontsize=10)
    study.figure(fig, "gradient_variance.png",
                 "Mini-batch gradient variance against batch size, log-log: about 1/B, "
                 "steepened at large B because batches are drawn without replacement from a "
                 "finite training set (dashed). s² is fitted to the points.")


def _plot_efficiency(study, data, policies):
    fig, axes = new_figure(3, 1, width=3.5, height=3.6)
    b = np.array(data["trained_batch_sizes"])
    band(axes[0, 0], b, np.array(data["examples_per_s"]).T, "examples/s", "tab:blue",
         marker="o")
    axes[0, 0].set_ylabel("training examples per second")
    axes[0, 0].set_title("Throughput", fontsize=10)
    axes[0, 0].set_ylim(0, 1.1 * np.nanmax(data["examples_per_s"]))
    for policy in policies:
        runs = [r for r in data["runs"] if r["policy"] == policy]
        for ax, key in zip(axes[0, 1:], ("steps_to_target", "seconds_to_target")):
            band(ax, b, _seed_rows(runs, key), POLICY_NAMES[policy], "tab:green",
                 "-" if policy == "fixed" else "--", marker="o")
    axes[0, 1].set_ylabel(f"steps to {TARGET:.0%} validation accuracy")
    axes[0, 1].set_title("Steps to the target", fontsize=10)
    axes[0, 2].set_ylabel("seconds to the target")
    axes[0, 2].set_title("Seconds to the target", fontsize=10)
    axes[0, 2].legend(fontsize=7, handlelength=3.5)  # long enough to show the dashes
    axes[0, 0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(b, [str(x) for x in b])
        ax.set_xlabel("batch size")
    for ax in axes[0, 1:]:  # throughput stays linear from 0, the rest are ratios
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:.2g}")  # not 3x10^1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    fig.suptitle("Adam on the digits MLP (mean, min-max over seeds; a missing point: that "
                 "batch size never reached the target)", fontsize=9)
    study.figure(fig, "efficiency.png",
                 "What a larger batch buys and costs: examples per second, and the steps and "
                 "seconds (steps x the run's median seconds per step) to reach the target "
                 "validation accuracy. Other processes shared the 2-core CPU: times are noisy.")


def _plot_accuracy(study, runs, s):
    fig, axes = new_figure(len(s["policies"]), 1, width=4.6, height=3.8)
    for ax, policy in zip(axes[0], s["policies"]):
        for b in s["trained_sizes"]:
            rs = runs[policy, b]
            steps = rs[0].curve("eval_accuracy")[0]
            band(ax, steps / (rs[0].history[-1]["step"] / s["epochs"]),
                 on_grid(rs, "eval_accuracy", steps), f"{b}", COLORS[b])
        ax.axhline(TARGET, color="gray", linestyle=":", linewidth=1)
        ax.set_ylim(0.5, 1.0)
        ax.set_xlabel("epoch")
        ax.set_title(POLICY_NAMES[policy], fontsize=10)
    axes[0, 0].set_ylabel("validation accuracy")
    axes[0, -1].legend(fontsize=7, title="batch size", title_fontsize=7, loc="lower right")
    fig.suptitle(f"Validation accuracy over {s['epochs']} epochs per batch size "
                 f"(mean, min-max over seeds; dotted: the target)", fontsize=10)
    study.figure(fig, "accuracy.png",
                 "Validation accuracy against epochs: at a fixed number of epochs a larger "
                 "batch means fewer updates.")


def _setup(study, s, n) -> str:
    return (
        f"scikit-learn's digits ({n:,} training, 180 validation images of 8x8). An MLP with 2 "
        f"hidden ReLU layers of {WIDTH}, no dropout, no label smoothing, trained with Adam at a "
        f"constant learning rate for {s['epochs']} epochs at batch sizes "
        f"{', '.join(map(str, s['trained_sizes']))} (the remainder of each epoch is dropped), "
        f"evaluated on validation about four times per epoch; the learning rate is "
        + " or ".join(POLICY_NAMES[p] for p in s["policies"]) + ". The target is "
        f"{TARGET:.0%} validation accuracy, reached at the first evaluation at or above it. "
        f"Throughput is the median of the toolkit's examples/s records (evaluation and "
        f"compilation excluded) over a batch size's runs, and the seconds to the target are "
        f"its steps times the run's median seconds per step: other processes shared the "
        f"2-core CPU and paused some windows, so times are noisy. Gradient variance: at fixed "
        f"parameters (the initialisation of each seed, and the end of its batch-"
        f"{BATCH_SIZES[0]} run at one rate), the mean over {s['batches']} mini-batches of "
        f"||g_B - g||², where g_B is the gradient `Trainer.gradients` computes for a mini-batch "
        f"and g the gradient on all {n:,} training examples; mini-batches are drawn as training "
        f"draws them, each epoch a fresh permutation cut into disjoint batches. Drawing "
        f"without replacement from N examples shrinks the variance by (N-B)/(N-1), so the "
        f"expected log-log slope over these sizes is {_slope(BATCH_SIZES, _expected(1.0, n)):.2f}"
        f", not -1. Seeds {', '.join(map(str, study.seeds))} change the initial weights and "
        f"the batch order.")


def _tables(data) -> list[Table]:
    variance = [[b, spread([v[i] for v in data["variance_init"]]),
                 spread([v[i] for v in data["variance_trained"]])
                 if "variance_trained" in data else "-"]
                for i, b in enumerate(data["batch_sizes"])]
    rows, speed = [], data["examples_per_s"]
    for r in data["runs"]:
        j = data["trained_batch_sizes"].index(r["batch_size"])
        reached = [x for x in r["steps_to_target"] if x is not None]
        seconds = [x for x in r["seconds_to_target"] if x is not None]
        note = "" if len(reached) == len(r["steps_to_target"]) else (
            f" ({len(reached)}/{len(r['steps_to_target'])} seeds)")
        rows.append([
            r["batch_size"], f"{r['learning_rate']:.3g}",
            "{:,.0f} ({:,.0f}-{:,.0f})".format(np.mean(speed[j]), min(speed[j]), max(speed[j])),
            r["steps"][0],
            (spread(reached) + note) if reached else "not reached",
            spread(seconds) if seconds else "-", spread(r["final_val_accuracy"])])
    return [
        Table("Gradient variance E||g_B - g||² per batch size (mean (min-max) over seeds)",
              ["batch", "at initialisation", f"after {data['epochs']} epochs at batch "
               f"{data['batch_sizes'][0]}"], variance),
        Table(f"Training per batch size and learning rate (mean (min-max) over seeds); the "
              f"target is {TARGET:.0%} validation accuracy, its seconds are steps x the run's "
              f"median seconds per step",
              ["batch", "learning rate", "examples/s", f"steps in {data['epochs']} epochs",
               "steps to target", "seconds to target", "final validation accuracy"], rows)]


def _meaning(data) -> str:
    b = data["trained_batch_sizes"]
    speed = [np.mean(x) for x in data["examples_per_s"]]
    runs = {(r["policy"], r["batch_size"]): r for r in data["runs"]}

    def mean(policy, size, key):
        values = runs[policy, size][key]
        return np.mean(values) if None not in values else np.nan

    variance = np.mean(data["variance_init"], 0)
    step_cost = b[-1] / b[0] * speed[0] / speed[-1]  # time of a step at b[-1] over one at b[0]
    fewer = {p: mean(p, b[0], "steps_to_target") / mean(p, b[-1], "steps_to_target")
             for p in ("fixed", "sqrt")}
    seconds = {k: mean(*k, "seconds_to_target") for k in
               (("fixed", b[0]), ("fixed", b[-1]), ("sqrt", b[-1]))}
    ratio = seconds["sqrt", b[-1]] / seconds["fixed", b[0]]
    return (
        f"Both halves of the trade-off are real. Gradient quality: the variance falls as 1/B "
        f"(slope {np.mean(data['slope_init']):.2f} at initialisation and "
        f"{np.mean(data['slope_trained']):.2f} after training, against "
        f"{data['expected_slope']:.2f} expected once the finite training set is accounted for), "
        f"so the noise's standard deviation only halves for every 4x larger batch. Efficiency: "
        f"examples per second grow {speed[-1] / speed[0]:.1f}x from batch {b[0]} to {b[-1]} on "
        f"this CPU, as the per-step overhead is paid once per batch and larger matrix products "
        f"use the cores better; still, a step at {b[-1]} costs {step_cost:.1f}x a step at "
        f"{b[0]}. The {variance[0] / variance[-1]:.0f}x smaller gradient variance buys only "
        f"{fewer['fixed']:.1f}x fewer steps to {TARGET:.0%} at one learning rate, and "
        f"{fewer['sqrt']:.1f}x with the rate scaled by sqrt(B)"
        + (": a large batch needs a larger rate to use its better gradient, which the "
           "article's sentence leaves out. " if fewer["sqrt"] > 1.5 * fewer["fixed"] else ". ")
        + f"In seconds, batch {b[0]} reaches the target in {seconds['fixed', b[0]]:.2f} s, batch "
          f"{b[-1]} in {seconds['fixed', b[-1]]:.2f} s at the same rate and "
          f"{seconds['sqrt', b[-1]]:.2f} s with the scaled one"
        + (": about even, within this shared machine's timing noise. " if 2 / 3 < ratio < 1.5
           else f": the {'large' if ratio < 1 else 'small'} batch is quicker. ")
        + f"So the balance depends on the rate that goes with the batch and on the hardware: on "
          f"an accelerator, where a step of {b[-1]} costs about what a step of {b[0]} does, "
          f"{fewer['sqrt']:.1f}x fewer steps would be {fewer['sqrt']:.1f}x less time. After "
        f"{data['epochs']} epochs every batch size ends within "
        f"{min(mean(p, x, 'final_val_accuracy') for p, x in runs):.3f}-"
        f"{max(mean(p, x, 'final_val_accuracy') for p, x in runs):.3f} validation accuracy: "
        f"on this small problem the batch size changes how fast, not how well.")
