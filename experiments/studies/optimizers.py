"""Optimizers compared fairly: SGD, SGD with momentum, Adam, AdamW and RMSprop, each at its own
best learning rate, on an image classifier and on a character-level language model.

Each optimizer's rate comes from a sweep on seed 0 over the 1-3-10 ladder of rates: three
neighbouring rungs first, then one more rung at a time towards the better side while the best
is at an edge. The best rate is then run with the other seeds. The two tasks: the digits CNN
(batch norm, no dropout) and a small LSTM on Tiny Shakespeare.

Larger, on an accelerator: the shipped `shakespeare_lstm.py` net (2 layers of 512) for a few
thousand steps.
"""
import numpy as np
from matplotlib.ticker import FuncFormatter

from experiments.studies.common import Table, band, new_figure, on_grid, spread

TITLE = "Optimizers"
CLAIM = ("(The article's table of optimizers, paraphrased:) SGD is simple but slow; momentum "
         "speeds it up; RMSprop and Adam adapt each parameter's step size, Adam being the usual "
         "default; AdamW decouples weight decay.")
SEEDS = 3

# name -> optimizer fields; RMSprop without momentum, as Hinton's lecture defined it
OPTIMIZERS = {
    "SGD": {"optimizer.name": "sgd", "optimizer.momentum": 0.0},
    "SGD + momentum": {"optimizer.name": "sgd", "optimizer.momentum": 0.9},
    "Adam": {"optimizer.name": "adam"},
    "AdamW": {"optimizer.name": "adamw", "optimizer.weight_decay": 0.1},
    "RMSprop": {"optimizer.name": "rmsprop", "optimizer.momentum": 0.0},
}
COLORS = {"SGD": "tab:gray", "SGD + momentum": "tab:blue", "Adam": "tab:red",
          "AdamW": "tab:orange", "RMSprop": "tab:green"}
STYLES = {"SGD": ":", "SGD + momentum": "-.", "Adam": "-", "AdamW": "--", "RMSprop": "-"}
LADDER = [m * 10.0 ** e for e in range(-5, 3) for m in (1, 3)]  # 1e-5, 3e-5, ..., 300
MAX_EXTENSIONS = 3
LOG_EVERY = 10

TASKS = {
    "cnn": dict(
        base="digits_cnn.py", about="CNN on digits", steps=300, eval_every=50,
        overrides={"model.dropout": 0.0, "dataset.batch_size": 32},
        start={"SGD": 0.1, "SGD + momentum": 0.01, "Adam": 3e-3, "AdamW": 3e-3,
               "RMSprop": 1e-3}),
    "lstm": dict(
        base="shakespeare_lstm.py", about="character LSTM on Tiny Shakespeare", steps=200,
        eval_every=50,
        overrides={"dataset.context": 64, "dataset.batch_size": 32,
                   "dataset.eval_batch_size": 256, "model.layers": 1, "model.hidden": 128,
                   "model.embed": 32, "model.dropout": 0.0, "optimizer.clip_norm": 1.0},
        start={"SGD": 10.0, "SGD + momentum": 3.0, "Adam": 3e-2, "AdamW": 3e-2,
               "RMSprop": 3e-2}),
}


def settings(quick: bool) -> dict:
    if quick:  # the test's claim: Adam beats plain SGD at equal steps on the recurrent net,
        # each at the rate the default-size sweep picked
        return dict(tasks={"lstm": {**TASKS["lstm"], "steps": 60, "eval_every": 60}},
                    optimizers=("SGD", "Adam"), fixed={"SGD": 10.0, "Adam": 3e-2})
    return dict(tasks=TASKS, optimizers=tuple(OPTIMIZERS), fixed=None)


def run(study) -> dict:
    s = settings(study.quick)
    sweep_runs = 0 if s["fixed"] else 3
    study.plan(len(s["tasks"]) * len(s["optimizers"]) * (sweep_runs + len(study.seeds)
                                                          - (1 if sweep_runs else 0)))
    data, runs = {"tasks": {}}, {}
    for task, t in s["tasks"].items():
        data["tasks"][task] = {"about": t["about"], "steps": t["steps"], "optimizers": {}}
        for opt in s["optimizers"]:
            if s["fixed"]:
                sweep, lr = {}, s["fixed"][opt]
            else:
                sweep = _sweep(study, task, t, opt)
                lr = min(sweep, key=lambda x: _score(sweep[x]))
            first = sweep.get(lr)
            runs[task, opt] = [
                first if seed == study.seeds[0] and first is not None else
                study.train(_label(task, opt, lr, seed), _config(study, t, opt, lr, seed),
                            test=False) for seed in study.seeds]
            data["tasks"][task]["optimizers"][opt] = _summary(sweep, lr, runs[task, opt])

    _plot_curves(study, runs, s, seconds=False)
    _plot_curves(study, runs, s, seconds=True)
    if not s["fixed"]:
        _plot_sweeps(study, data, s)
    return {"finding": _finding(data), "setup": _setup(study, s), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "", "data": data}


def _config(study, t, opt, lr, seed):
    return study.config(t["base"], **{
        **t["overrides"], **OPTIMIZERS[opt], "seed": seed, "optimizer.learning_rate": lr,
        "optimizer.schedule": "constant", "optimizer.warmup_steps": 0, "steps": t["steps"],
        "eval_every": t["eval_every"], "checkpoint.every": t["steps"], "log_every": LOG_EVERY})


def _label(task, opt, lr, seed):
    return f"{task}-{opt.replace(' + ', '_')}-lr{lr:g}-seed{seed}"


def _score(r) -> float:
    """What the sweep minimises: the final validation loss (inf for a diverged run)."""
    return np.inf if r.diverged else r.last("eval_loss")


def _sweep(study, task, t, opt) -> dict:
    """{learning rate: Run} on seed 0: three rungs around the start, extended one rung at a
    time while the best is at an edge (a diverged rung is never extended past)."""
    i = LADDER.index(t["start"][opt])
    tried = {}

    def train(j):
        lr = LADDER[j]
        tried[j] = study.train(_label(task, opt, lr, study.seeds[0]),
                               _config(study, t, opt, lr, study.seeds[0]), test=False)

    for j in (i - 1, i, i + 1):
        train(j)
    for _ in range(MAX_EXTENSIONS):
        best = min(tried, key=lambda j: _score(tried[j]))
        step = -1 if best == min(tried) else 1 if best == max(tried) else 0
        if step == 0 or not 0 <= best + step < len(LADDER):
            break
        study.plan_more(1)
        train(best + step)
    return {LADDER[j]: tried[j] for j in sorted(tried)}


def _summary(sweep, lr, rs) -> dict:
    rates = sorted(sweep)
    return {
        "sweep": [{"learning_rate": x, "val_loss": None if sweep[x].diverged else
                   sweep[x].last("eval_loss"), "diverged": bool(sweep[x].diverged)}
                  for x in rates],
        "learning_rate": lr,
        "best_at_edge": bool(rates) and lr in (rates[0], rates[-1]),
        "val_loss": [None if r.diverged else r.last("eval_loss") for r in rs],
        "val_accuracy": [None if r.diverged else r.last("eval_accuracy") for r in rs],
        "train_loss": [None if r.diverged else r.last("train_loss") for r in rs],
        "seconds_per_step": [_seconds_per_step(r) for r in rs],
        "training_seconds": [float(r.training_seconds()[1][-1]) for r in rs],
        "wall_seconds": [r.seconds for r in rs],
        "diverged": [bool(r.diverged) for r in rs],
    }


def _seconds_per_step(r) -> float:
    """The median over the run's logged windows of seconds per step: compilation and
    evaluation are left out, and so are the pauses when other processes took the CPU."""
    return float(np.median(r.config.dataset.batch_size / r.curve("examples_per_s")[1]))


def _plot_curves(study, runs, s, seconds: bool):
    tasks = list(s["tasks"])
    fig, axes = new_figure(len(tasks), 1, width=5.0, height=3.9)
    for ax, task in zip(axes[0], tasks):
        t = s["tasks"][task]
        grid = np.arange(LOG_EVERY, t["steps"] + 1, LOG_EVERY)
        for opt in s["optimizers"]:
            rs = runs[task, opt]
            x = grid * np.mean([_seconds_per_step(r) for r in rs]) if seconds else grid
            band(ax, x, on_grid(rs, "train_loss", grid),
                 f"{opt} ({rs[0].config.optimizer.learning_rate:g})", COLORS[opt], STYLES[opt])
        ax.set_xlabel("seconds of training: steps x median seconds per step (mean over seeds)"
                      if seconds else "training step (batch of 32)", fontsize=8)
        ax.set_title(f"{t['about']}", fontsize=10)
        ax.set_ylabel(f"training loss (nats{'/character' if task == 'lstm' else ''}, "
                      f"mean of {LOG_EVERY} steps)", fontsize=9)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 2.5 rather than 2.5x10^0
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        if high / low < 10:  # less than a decade: label the minor ticks too
            ax.yaxis.set_minor_formatter(plain)
        ax.legend(fontsize=7, title="optimizer (learning rate)", title_fontsize=7)
    against = "seconds" if seconds else "steps"
    fig.suptitle(f"Training loss against {against}, each optimizer at its best rate\n"
                 f"(mean, min-max over seeds)", fontsize=10)
    study.figure(fig, f"curves_{against}.png",
                 f"Training loss against training {against} for each optimizer at the "
                 f"learning rate its sweep picked."
                 + (" Seconds are steps times each run's median time per step, as other "
                   "processes shared the 2-core CPU." if seconds else ""))


def _plot_sweeps(study, data, s):
    tasks = list(s["tasks"])
    fig, axes = new_figure(len(tasks), 1, width=5.0, height=3.9)
    for ax, task in zip(axes[0], tasks):
        for opt, o in data["tasks"][task]["optimizers"].items():
            xs = [p["learning_rate"] for p in o["sweep"]]
            ys = [np.nan if p["diverged"] else p["val_loss"] for p in o["sweep"]]
            ax.plot(xs, ys, STYLES[opt], color=COLORS[opt], marker="o", markersize=4,
                    label=opt)
            ax.plot([o["learning_rate"]], [o["sweep"][xs.index(o["learning_rate"])]["val_loss"]],
                    "*", color=COLORS[opt], markersize=12)
            for p in o["sweep"]:
                if p["diverged"]:
                    ax.axvline(p["learning_rate"], color=COLORS[opt], alpha=0.4, linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss, seed 0")
        ax.set_title(data["tasks"][task]["about"], fontsize=10)
        ax.legend(fontsize=7)
    diverged = any(p["diverged"] for d in data["tasks"].values()
                   for o in d["optimizers"].values() for p in o["sweep"])
    fig.suptitle("The learning-rate sweeps (star: the rate used"
                 + ("; thin line: diverged)" if diverged else ")"), fontsize=10)
    study.figure(fig, "sweeps.png",
                 "Each optimizer's sweep: final validation loss on seed 0 per learning rate. "
                 "The star is the rate every seed then ran with.")


def _losses(o) -> np.ndarray:
    """An optimizer's final validation loss per seed, inf where the run diverged."""
    return np.array([np.inf if v is None else v for v in o["val_loss"]])


def _ranked(task_data):
    opts = task_data["optimizers"]
    return sorted(opts, key=lambda o: np.mean(_losses(opts[o])))


def _finding(data) -> str:
    parts = []
    for task, d in data["tasks"].items():
        opts, order = d["optimizers"], _ranked(d)
        mean = {o: np.mean(_losses(opts[o])) for o in order}
        head = f"on the {d['about']} after {d['steps']} steps"
        if len(order) > 2 and mean[order[-1]] - mean[order[0]] <= 2 * _seed_range(d):
            accuracy = [np.mean(opts[o]["val_accuracy"]) for o in order]
            parts.append(
                f"{head} all {len(order)} end within validation loss {mean[order[0]]:.3f}-"
                f"{mean[order[-1]]:.3f} (accuracy {min(accuracy):.3f}-{max(accuracy):.3f}), "
                f"within twice the spread between seeds ({_seed_range(d):.3f})")
        else:
            parts.append(f"{head} the validation loss is "
                         + ", ".join(f"{o} {spread(_losses(opts[o]))}" for o in order))
    text = "; ".join(parts[::-1])  # the recurrent net, where the optimizers differ, first
    swept = any(o["sweep"] for d in data["tasks"].values() for o in d["optimizers"].values())
    return text[0].upper() + text[1:] + (" (each optimizer at its own best learning rate)."
                                         if swept else " (rates fixed from the default sweep).")


def _seed_range(task_data) -> float:
    """The spread between seeds of one optimizer, averaged over the optimizers."""
    return float(np.mean([np.ptp(_losses(o)) for o in task_data["optimizers"].values()
                          if np.isfinite(_losses(o)).all()]))


def _setup(study, s) -> str:
    lines = []
    for task, t in s["tasks"].items():
        model = ("a CNN of two conv blocks (32 and 64 channels, batch norm) and a dense layer of "
                 "128, no dropout; digits has 1,257 training and 180 validation images of 8x8"
                 if task == "cnn" else
                 "a 1-layer LSTM of 128 units with 32-dimensional character embeddings, windows "
                 "of 64 characters, gradients clipped at global norm 1 (as the shipped LSTM "
                 "config does, for every optimizer alike); validation is the text's held-out "
                 "10 %")
        lines.append(f"- **{t['about']}**: {model}. Batch 32, {t['steps']} steps, validation "
                     f"every {t['eval_every']}.")
    sweep = ("Each optimizer's learning rate is the one with the lowest final validation loss "
             "on seed 0 in a sweep over the ladder 1, 3, 10, 30, ... x 10^k: three neighbouring "
             "rungs centred where a first, wider sweep found the best (so that most sweeps "
             "need no more), extended a rung at a time (up to "
             f"{MAX_EXTENSIONS}) while the best was at an edge; that seed-0 run is reused as "
             "seed 0 of the comparison, which favours every optimizer alike. "
             if not s["fixed"] else
             f"Quick mode: fixed rates {s['fixed']} (the ones the default-size sweep picked). ")
    return (
        "\n".join(lines) + "\n\n"
        f"Constant learning rate, no warmup, for every optimizer. SGD + momentum uses 0.9; "
        f"RMSprop has no momentum (decay 0.9, as in optax); AdamW is Adam with decoupled "
        f"weight decay 0.1 on the weight matrices (biases and norm scales are not decayed): at "
        f"optax's default of 1e-4 it would be indistinguishable from Adam over runs this short. "
        + sweep + f"Seeds {', '.join(map(str, study.seeds))} change the initial weights and the "
        f"batch order. Times come from the toolkit's throughput records (compilation and "
        f"evaluation excluded): 'training s' sums them, the curves against seconds use each "
        f"run's median seconds per step, since other processes shared the 2-core CPU while "
        f"these ran and paused some windows.")


def _tables(data) -> list[Table]:
    tables = []
    for task, d in data["tasks"].items():
        rows = []
        for opt in _ranked(d):
            o = d["optimizers"][opt]
            ok = [v for v in o["val_loss"] if v is not None]
            rows.append([
                opt, f"{o['learning_rate']:g}" + (" (edge)" if o["best_at_edge"] else ""),
                spread(ok) if ok else "diverged",
                spread([v for v in o["val_accuracy"] if v is not None]) if ok else "-",
                f"{1000 * np.mean(o['seconds_per_step']):.2f}", spread(o["training_seconds"]),
                spread(o["wall_seconds"]),
                ", ".join(f"{p['learning_rate']:g}: " + ("div." if p["diverged"] else
                                                         f"{p['val_loss']:.3f}")
                          for p in o["sweep"]) or "fixed"])
        accuracy = "next-character accuracy" if task == "lstm" else "validation accuracy"
        tables.append(Table(
            f"{d['about']}, {d['steps']} steps (mean (min-max) over seeds; best first)",
            ["optimizer", "learning rate", "validation loss", accuracy, "ms per step (median)",
             "training s", "wall s", "sweep (seed 0: rate: validation loss)"], rows))
    return tables


def _meaning(data) -> str:
    def loss(task, opt):
        return np.mean(_losses(data["tasks"][task]["optimizers"][opt]))

    def seed_range(task):
        return _seed_range(data["tasks"][task])

    def neighbour_cost(task):  # how much a rate one rung (3x) off the best costs, typically
        costs = []
        for o in data["tasks"][task]["optimizers"].values():
            rates = [p["learning_rate"] for p in o["sweep"]]
            i = rates.index(o["learning_rate"])
            best = o["sweep"][i]["val_loss"]
            costs += [o["sweep"][j]["val_loss"] - best for j in (i - 1, i + 1)
                      if 0 <= j < len(rates) and not o["sweep"][j]["diverged"]]
        return np.median(costs)

    adaptive = ("Adam", "AdamW", "RMSprop")
    gap = min(loss("lstm", "SGD") - loss("lstm", o) for o in adaptive)
    text = ("On the recurrent language model " + (
        f"the table's ranking holds: every adaptive method beats plain SGD by at least "
        f"{gap:.2f} nats per character at equal steps, with SGD at its own best rate. " if gap > 0
        else f"the adaptive methods do not all beat plain SGD (the smallest gap is {gap:.2f} "
             f"nats per character). "))
    momentum, plain = loss("lstm", "SGD + momentum"), loss("lstm", "SGD")
    text += (f"Momentum {'closes part of that gap' if momentum < plain else 'does not help'} "
             f"({momentum:.3f} against plain SGD's {plain:.3f}). ")
    order = _ranked(data["tasks"]["cnn"])
    between = loss("cnn", order[-1]) - loss("cnn", order[0])
    text += (f"On the small image classifier the order is {' < '.join(order)} (validation "
             f"loss), and the gap from best to worst ({between:.3f}) is "
             + (f"within about twice the spread between seeds of one optimizer "
                f"({seed_range('cnn'):.3f}): once each optimizer has its own rate, a small, "
                f"well-conditioned problem with batch norm leaves little for adaptivity to "
                f"win, as tuned SGD matches Adam on many vision tasks. "
                if between <= 2 * seed_range("cnn") else
                f"larger than the spread between seeds ({seed_range('cnn'):.3f}). "))
    text += (f"AdamW minus Adam is {loss('cnn', 'AdamW') - loss('cnn', 'Adam'):+.3f} (CNN) and "
             f"{loss('lstm', 'AdamW') - loss('lstm', 'Adam'):+.3f} (LSTM) in validation loss: "
             f"decoupled weight decay is a regulariser for long runs, not a faster optimizer. ")
    cost = {t: neighbour_cost(t) for t in data["tasks"]}
    text += (f"And the learning rate matters as much as the optimizer: one rung (3x) off its "
             f"best rate typically costs an optimizer {cost['cnn']:.3f} (CNN) and "
             f"{cost['lstm']:.3f} (LSTM) in validation loss, which is why the table compares "
             f"each at its own best rate; an untuned comparison would rank the rates, not the "
             f"optimizers.")
    return text
