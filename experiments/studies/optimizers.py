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

from experiments.studies.common import (LADDER, Cited, Table, band, compare, new_figure,
                                        on_grid, spread)

TITLE = "Optimizers"
CLAIM = ("(The article's table of optimizers, paraphrased:) SGD is simple but slow; momentum "
         "speeds it up; RMSprop and Adam adapt each parameter's step size, Adam being the usual "
         "default; AdamW decouples weight decay.")
SEEDS = 5

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
MAX_EXTENSIONS = 3
LOG_EVERY = 10

TASKS = {
    "cnn": dict(
        base="digits_cnn.py", about="CNN on digits", steps=300, eval_every=25,
        overrides={"model.dropout": 0.0, "dataset.batch_size": 32},
        start={"SGD": 0.1, "SGD + momentum": 0.01, "Adam": 3e-3, "AdamW": 3e-3,
               "RMSprop": 1e-3}),
    "lstm": dict(
        base="shakespeare_lstm.py", about="character LSTM on Tiny Shakespeare", steps=1000,
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
        return dict(tasks={"lstm": {**TASKS["lstm"], "steps": 60, "eval_every": 20}},
                    optimizers=("SGD", "Adam"), fixed={"SGD": 10.0, "Adam": 1e-2})
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
            rest = study.seeds[1:] if first is not None else study.seeds
            runs[task, opt] = ([first] if first is not None else []) + study.train_group(
                [_label(task, opt, lr, seed) for seed in rest],
                [_config(study, t, opt, lr, seed) for seed in rest], test=False)
            data["tasks"][task]["optimizers"][opt] = _summary(sweep, lr, runs[task, opt])

    _plot_curves(study, runs, s)
    if not s["fixed"]:
        _plot_sweeps(study, data, s)
    return {"finding": _finding(data), "setup": _setup(study, s), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "",
            "literature": _literature(data) if not study.quick else [], "data": data}


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
        "diverged": [bool(r.diverged) for r in rs],
    }


def _plot_curves(study, runs, s):
    tasks = list(s["tasks"])
    fig, axes = new_figure(len(tasks), 1, width=5.0, height=3.9)
    for ax, task in zip(axes[0], tasks):
        t = s["tasks"][task]
        grid = np.arange(t["eval_every"], t["steps"] + 1, t["eval_every"])
        for opt in s["optimizers"]:
            rs = runs[task, opt]
            values = on_grid(rs, "eval_loss", grid)
            band(ax, grid, values, f"{opt} ({rs[0].config.optimizer.learning_rate:g})",
                 COLORS[opt], STYLES[opt])
            stopped = [r for r in rs if r.diverged]
            if stopped:  # a diverged seed leaves the mean: marked where it stopped
                ax.plot([r.diverged_at for r in stopped], [ax.get_ylim()[1]] * len(stopped),
                        "x", color=COLORS[opt], markersize=7)
        ax.set_xlabel("training step (batch of 32)", fontsize=8)
        ax.set_title(f"{t['about']}", fontsize=10)
        ax.set_ylabel(f"validation loss (nats{'/character' if task == 'lstm' else ''})",
                      fontsize=9)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 2.5 rather than 2.5x10^0
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        if high / low < 10:  # less than a decade: label the minor ticks too
            ax.yaxis.set_minor_formatter(plain)
        ax.legend(fontsize=7, title="optimizer (learning rate)", title_fontsize=7)
    fig.suptitle(f"Validation loss against steps, each optimizer at its own best rate\n"
                 f"(mean, min-max over {len(study.seeds)} seeds)", fontsize=10)
    study.figure(fig, "curves_steps.png",
                 "Validation loss against training steps for each optimizer at the learning "
                 "rate its sweep picked: what the finding ranks, at every evaluation.")


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


def _tiers(task_data) -> list[list[str]]:
    """The optimizers, best first, in tiers: each tier holds those that tie (paired t-test over
    the seeds on the final validation loss, p >= 0.05) with its first member."""
    opts, tiers = task_data["optimizers"], []
    for o in _ranked(task_data):
        if tiers and compare(_losses(opts[o]), _losses(opts[tiers[-1][0]])).verdict == "tie":
            tiers[-1].append(o)
        else:
            tiers.append([o])
    return tiers


def _ordered(task_data) -> str:
    """'RMSprop 1.90 (1.89-1.93) = AdamW 1.90 ... > SGD 2.13 (...)': '=' a tie, '>' better."""
    opts = task_data["optimizers"]
    return " > ".join(" = ".join(f"{o} {spread(_losses(opts[o]))}" for o in tier)
                      for tier in _tiers(task_data))


def _finding(data) -> str:
    parts = [f"on the {d['about']} after {d['steps']} steps the validation loss ranks "
             f"{_ordered(d)}" for d in data["tasks"].values()]
    text = "; ".join(parts[::-1])  # the recurrent net, where the optimizers differ, first
    swept = any(o["sweep"] for d in data["tasks"].values() for o in d["optimizers"].values())
    seeds = len(next(iter(data["tasks"].values()))["optimizers"]["SGD"]["val_loss"])
    return (text[0].upper() + text[1:] + f" ('=': a tie, '>': better by a paired t-test over "
            f"{seeds} seeds at p < 0.05; each optimizer at its "
            + ("own best learning rate)." if swept else "rate from the default sweep)."))


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
        "Constant learning rate, no warmup, for every optimizer. SGD + momentum uses 0.9; "
        "RMSprop has no momentum (decay 0.9, as in optax); AdamW is Adam with decoupled "
        "weight decay 0.1 on the weight matrices (biases and norm scales are not decayed): at "
        "optax's default of 1e-4 it would be indistinguishable from Adam over runs this short. "
        + sweep + f"Seeds {', '.join(map(str, study.seeds))} change the initial weights and the "
        f"batch order, and seed i of one optimizer is compared with seed i of another by a "
        f"paired t-test on the final validation loss. Nothing here is timed: a step of these "
        f"small nets takes milliseconds on a CPU, too little to compare optimizers' costs.")


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
                ", ".join(f"{p['learning_rate']:g}: " + ("div." if p["diverged"] else
                                                         f"{p['val_loss']:.3f}")
                          for p in o["sweep"]) or "fixed"])
        accuracy = "next-character accuracy" if task == "lstm" else "validation accuracy"
        tables.append(Table(
            f"{d['about']}, {d['steps']} steps (mean (min-max) over seeds; best first)",
            ["optimizer", "learning rate", "validation loss", accuracy,
             "sweep (seed 0: rate: validation loss)"], rows))
        tables.append(Table(
            f"{d['about']}: tiers by paired t-test (those in one tier tie)",
            ["tier", "optimizers"], [[i + 1, ", ".join(tier)]
                                     for i, tier in enumerate(_tiers(d))]))
    return tables


def _meaning(data) -> str:
    def loss(task, opt):
        return np.mean(_losses(data["tasks"][task]["optimizers"][opt]))

    def versus(task, a, b):
        opts = data["tasks"][task]["optimizers"]
        return compare(_losses(opts[a]), _losses(opts[b])).words(a, b)

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
    lstm_tiers = _tiers(data["tasks"]["lstm"])
    top = lstm_tiers[0]
    text = (f"On the recurrent language model the best tier is {', '.join(top)}"
            + (" (they tie)" if len(top) > 1 else "") + ". Against plain SGD: "
            + "; ".join(versus("lstm", o, "SGD") for o in adaptive) + "; among the adaptive "
            "methods: " + versus("lstm", "Adam", "RMSprop") + ". ")
    if len(top) > 1 and set(top) & set(adaptive) == set(top):
        text += ("The table's order among the adaptive methods (Adam the usual default) is not "
                 "what this measures: they tie. ")
    text += versus("lstm", "SGD + momentum", "SGD") + ". "
    cnn_tiers = _tiers(data["tasks"]["cnn"])
    text += ("On the small image classifier the tiers are "
             + " > ".join("{" + ", ".join(t) + "}" for t in cnn_tiers)
             + (": once each optimizer has its own rate, a small, well-conditioned problem "
                "with batch norm leaves little for adaptivity to win. " if len(cnn_tiers) <= 2
                else ". "))
    text += (f"AdamW minus Adam is {loss('cnn', 'AdamW') - loss('cnn', 'Adam'):+.3f} (CNN; "
             f"{versus('cnn', 'AdamW', 'Adam')}) and "
             f"{loss('lstm', 'AdamW') - loss('lstm', 'Adam'):+.3f} (LSTM; "
             f"{versus('lstm', 'AdamW', 'Adam')}) in validation loss: decoupled weight decay is "
             f"a regulariser for long runs, not a faster optimizer. ")
    cost = {t: neighbour_cost(t) for t in data["tasks"]}
    text += (f"And the learning rate matters as much as the optimizer: one rung (3x) off its "
             f"best rate typically costs an optimizer {cost['cnn']:.3f} (CNN) and "
             f"{cost['lstm']:.3f} (LSTM) in validation loss, which is why the table compares "
             f"each at its own best rate; an untuned comparison would rank the rates, not the "
             f"optimizers.")
    return text


def _literature(data) -> list[Cited]:
    lstm, cnn = data["tasks"]["lstm"], data["tasks"]["cnn"]

    def versus(d, a, b):
        return compare(_losses(d["optimizers"][a]), _losses(d["optimizers"][b])).verdict

    def words(d, a, b):
        return compare(_losses(d["optimizers"][a]), _losses(d["optimizers"][b])).words(a, b)

    adam = {o: versus(lstm, "Adam", o) for o in ("SGD + momentum", "RMSprop")}
    kingma = ("agrees: Adam beats SGD + momentum" if adam["SGD + momentum"] == "a" else
              "disagrees: Adam does not beat SGD + momentum" if adam["SGD + momentum"] == "b"
              else "not shown: Adam and SGD + momentum tie")
    kingma += {"a": ", and beats RMSprop", "tie": ", and ties RMSprop",
               "b": ", but RMSprop beats Adam"}[adam["RMSprop"]]
    adaptive = ("Adam", "AdamW", "RMSprop")
    ahead = [o for o in adaptive if versus(lstm, o, "SGD + momentum") == "a"]
    epochs = lstm["steps"] * 32 * 64 / 1.0e6
    adamw = versus(cnn, "AdamW", "Adam"), versus(lstm, "AdamW", "Adam")
    loshchilov = ("not shown: AdamW and Adam tie on both tasks over runs this short"
                  if adamw == ("tie", "tie") else
                  "agrees in part: AdamW is better on one task" if "a" in adamw else
                  "disagrees over runs this short: Adam is better, the decay costs a little")
    return [
        Cited("Kingma & Ba 2015 (Adam)",
              "Adam trains faster than SGD with momentum and as fast as or faster than RMSprop "
              "and AdaGrad on MNIST, IMDB and CIFAR-10 nets",
              f"LSTM: {words(lstm, 'Adam', 'SGD + momentum')}; "
              f"{words(lstm, 'Adam', 'RMSprop')}", kingma + " on the LSTM"),
        Cited("Wilson et al. 2017",
              "adaptive methods lead early in training, and tuned SGD (with momentum) "
              "generalises as well or better by the end on CIFAR-10, character-level and "
              "parsing tasks",
              f"LSTM after {lstm['steps']} steps (about {epochs:.1f} epochs of the text): "
              + "; ".join(words(lstm, o, "SGD + momentum") for o in adaptive)
              + f". CNN after {cnn['steps']} steps: {words(cnn, 'SGD + momentum', 'Adam')}",
              (f"agrees with their early regime ({', '.join(ahead)} ahead of tuned SGD + "
               f"momentum on the LSTM); " if ahead else
               "no adaptive method is ahead of tuned SGD + momentum even this early; ")
              + "these runs are too short to test their end point"),
        Cited("Loshchilov & Hutter 2019 (AdamW)",
              "decoupling weight decay from the gradient step improves Adam's generalisation, "
              "mostly over long schedules",
              f"CNN: {words(cnn, 'AdamW', 'Adam')}; LSTM: {words(lstm, 'AdamW', 'Adam')}",
              loshchilov),
    ]
