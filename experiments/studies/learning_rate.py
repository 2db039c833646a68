"""The learning rate: too large diverges, too small crawls, and the best is in between.

Plain SGD (no momentum, constant rate) trains the digits MLP at learning rates spanning five
orders of magnitude for the same number of steps; the training loss over the last
tenth of the run, against the learning rate, draws the U the article describes.

Every comparison in the words ("best", "oscillates", "nothing learns") rests on the seeds: the
best rate is checked against its neighbours by a paired t-test over the seeds
(`common.compare`), and the failures are counted seed by seed.

Larger, on an accelerator: the same ladder of rates on the MNIST CNN for a few epochs.
"""
import numpy as np
from matplotlib import cm, colors

from experiments.studies.common import Cited, Table, band, compare, new_figure, on_grid, spread

TITLE = "The learning rate"
CLAIM = ("Too large and the optimisation oscillates or diverges, too small and training is "
         "prohibitively slow.")
SEEDS = 5

BATCH, WIDTH, LOG_EVERY = 32, 512, 10
RAGGED = 2  # a run oscillates when it ends above this many times its lowest logged loss


def settings(quick: bool) -> dict:
    if quick:  # the test's claim: the ends of the range, and the best rate against its
        # neighbours over 5 seeds
        return dict(learning_rates=(1e-4, 0.1, 0.3, 1.0, 10.0), steps=200)
    return dict(learning_rates=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0),
                steps=1000)


def run(study) -> dict:
    s = settings(study.quick)
    study.plan(len(study.seeds) * len(s["learning_rates"]))
    keys = [(lr, seed) for lr in s["learning_rates"] for seed in study.seeds]
    trained = study.train_group([f"lr{lr:g}-seed{seed}" for lr, seed in keys],
                                [_config(study, lr, s["steps"], seed) for lr, seed in keys],
                                test=False)  # one program: only the rate and the seed differ
    runs = {lr: [r for (rate, _), r in zip(keys, trained) if rate == lr]
            for lr in s["learning_rates"]}

    data = {"steps": s["steps"], "learning_rates": list(s["learning_rates"]),
            "initial_loss": [r.first("train_loss") for r in runs[s["learning_rates"][0]]],
            "runs": [_summary(lr, rs, s["steps"]) for lr, rs in runs.items()]}
    mean_final = [np.mean([np.inf if x is None else x for x in r["final_loss"]])
                  for r in data["runs"]]
    best = data["runs"][int(np.argmin(mean_final))]
    data["best_learning_rate"] = best["learning_rate"]
    data["best_against_neighbours"] = _against_neighbours(data)
    _plot_final_loss(study, data)
    _plot_curves(study, runs, s)
    return {"finding": _finding(data), "setup": _setup(study, s), "tables": [_table(data)],
            "meaning": _meaning(data) if not study.quick else "",
            "literature": _literature(data) if not study.quick else [], "data": data}


def _final(r) -> np.ndarray:
    """Final training loss per seed, inf where the run diverged."""
    return np.array([np.inf if x is None else x for x in r["final_loss"]], dtype=float)


def _against_neighbours(data) -> list[dict]:
    """The best rate's final training loss against each neighbouring rate's, seed by seed: a
    paired t-test on log10 of the losses (an exact sign test where a neighbour diverged)."""
    runs, i = data["runs"], [r["learning_rate"] for r in data["runs"]].index(
        data["best_learning_rate"])
    out = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(runs):
            c = compare(_final(runs[i]), _final(runs[j]), log=True)
            out.append({"learning_rate": runs[j]["learning_rate"], "verdict": c.verdict,
                        "p": c.p, "seeds": c.seeds})
    return out


def _best_words(data) -> str:
    """'better than 0.1 and 1 (paired t-tests over 5 seeds, p = 0.001, 0.02)', or with a tie."""
    n = data["best_against_neighbours"][0]["seeds"]
    beaten = [c for c in data["best_against_neighbours"] if c["verdict"] == "a"]
    tied = [c for c in data["best_against_neighbours"] if c["verdict"] != "a"]
    parts = []
    if beaten:
        parts.append("lower than at " + " and ".join(f"{c['learning_rate']:g}" for c in beaten)
                     + " (p = " + ", ".join(f"{c['p']:.2g}" for c in beaten) + ")")
    if tied:
        parts.append("a tie with " + " and ".join(f"{c['learning_rate']:g}" for c in tied)
                     + " (p = " + ", ".join(f"{c['p']:.2g}" for c in tied) + ")")
    return "; ".join(parts) + f", paired t-test on log loss over {n} seeds"


def _ragged(r) -> list[bool]:
    """Per seed: ended above RAGGED times the lowest loss it logged (or diverged)."""
    return [f is None or f > RAGGED * lo for f, lo in zip(r["final_loss"], r["lowest_loss"])]


def _finding(data) -> str:
    best = next(r for r in data["runs"] if r["learning_rate"] == data["best_learning_rate"])
    low, edge, failed = data["runs"][0], _failure_edge(data), _failed_runs(data)
    finding = (
        f"After {data['steps']} steps of plain SGD from a loss of "
        f"{np.mean(data['initial_loss']):.2f}, learning rate {low['learning_rate']:g} lowers it "
        f"by only {100 * np.mean(low['relative_decrease']):.1f} % (every seed under "
        f"{100 * max(low['relative_decrease']):.1f} %), {best['learning_rate']:g} is best "
        f"(final training loss {spread(best['final_loss'])}; {_best_words(data)})")
    between = [r for r in data["runs"] if best["learning_rate"] < r["learning_rate"]
               < (edge["learning_rate"] if edge else np.inf)]
    if between:
        r = between[-1]
        ragged = sum(_ragged(r))
        finding += (f", {r['learning_rate']:g} ends at {spread(r['final_loss'])} after a lowest "
                    f"logged loss of {spread(r['lowest_loss'])} ({ragged} of "
                    f"{len(r['final_loss'])} seeds end more than {RAGGED}x above their lowest"
                    + (": it oscillates)" if 2 * ragged > len(r["final_loss"]) else ")"))
    if edge:
        diverged = sum(sum(r["diverged"]) for r in failed)
        total = sum(len(r["diverged"]) for r in failed)
        finding += (f", and from {edge['learning_rate']:g} up no run learns ({diverged} of "
                    f"{total} diverged" + (f", the other {total - diverged} stalled at chance)"
                                           if diverged < total else ")"))
    return finding + "."


def _config(study, lr, steps, seed):
    return study.config(
        "digits_mlp.py", **{
            "seed": seed, "model.width": WIDTH, "model.dropout": 0.0,
            "loss.label_smoothing": 0.0, "optimizer.name": "sgd", "optimizer.momentum": 0.0,
            "optimizer.learning_rate": lr, "optimizer.schedule": "constant",
            "optimizer.warmup_steps": 0, "dataset.batch_size": BATCH, "steps": steps,
            "eval_every": steps // 5, "checkpoint.every": steps, "log_every": LOG_EVERY})


def _summary(lr, rs, steps) -> dict:
    """Per seed: the mean training loss over the last tenth of the steps (None if the run
    diverged), how much of the initial loss that removed, the lowest loss logged on the way
    (a final loss far above it means the run oscillates), and the last validation metrics."""
    def final(r):
        s, v = r.curve("train_loss")
        return None if r.diverged else float(np.mean(v[s > steps - steps // 10]))

    finals = [final(r) for r in rs]
    return {
        "learning_rate": lr,
        "final_loss": finals,
        "relative_decrease": [None if f is None else 1 - f / r.first("train_loss")
                              for f, r in zip(finals, rs)],
        "lowest_loss": [float(np.min(r.curve("train_loss")[1])) for r in rs],
        "above_start": [f is None or f > r.first("train_loss") for f, r in zip(finals, rs)],
        "diverged": [bool(r.diverged) for r in rs],
        "diverged_at_step": [r.diverged_at for r in rs],
        "val_loss": [None if r.diverged else r.last("eval_loss") for r in rs],
        "val_accuracy": [None if r.diverged else r.last("eval_accuracy") for r in rs],
    }


def _colors(learning_rates):
    norm = colors.LogNorm(min(learning_rates), max(learning_rates))
    return {lr: cm.turbo(0.05 + 0.9 * norm(lr)) for lr in learning_rates}


def _values(rows):
    """Rows per seed with None -> NaN, for `band`."""
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _plot_final_loss(study, data):
    fig, axes = new_figure(1, 1, width=6.4, height=4.2)
    ax = axes[0, 0]
    lrs = np.array(data["learning_rates"])
    train = _values(np.array([r["final_loss"] for r in data["runs"]], dtype=object).T)
    val = _values(np.array([r["val_loss"] for r in data["runs"]], dtype=object).T)
    band(ax, lrs, train, "training loss, last 10 % of steps", "tab:blue", marker="o")
    band(ax, lrs, val, "validation loss at the end", "tab:green", "--", marker="s")
    # each seed too: just above the best rate some seeds oscillate and others do not
    ax.plot(np.repeat(lrs[None], len(train), 0).ravel(), train.ravel(), ".", color="navy",
            markersize=4, alpha=0.6, label="training loss, each seed")
    start = np.mean(data["initial_loss"])
    ax.axhline(start, color="gray", linestyle=":", label=f"loss at step 1 ({start:.2f})")
    diverged = [r["learning_rate"] for r in data["runs"] if any(r["diverged"])]
    if diverged:
        ax.plot(diverged, [1.6 * start] * len(diverged), "x", color="tab:red", markersize=10,
                markeredgewidth=2, label="diverged (loss became inf/NaN)")
    ax.axvline(data["best_learning_rate"], color="tab:blue", alpha=0.3, linewidth=6,
               label=f"best: {data['best_learning_rate']:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (plain SGD, constant)")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Loss after {data['steps']} steps against the learning rate\n"
                 f"(digits MLP; mean, min-max over seeds)", fontsize=10)
    study.figure(fig, "final_loss_vs_learning_rate.png",
                 "The U: loss after a fixed number of SGD steps against the learning rate. Too "
                 "small barely moves from the start; too large diverges.")


def _plot_curves(study, runs, s):
    fig, axes = new_figure(1, 1, width=7.0, height=4.2)
    ax = axes[0, 0]
    color = _colors(s["learning_rates"])
    lowest = min(np.nanmin(r.curve("train_loss")[1]) for rs in runs.values() for r in rs)
    grid = np.concatenate([[1], np.arange(LOG_EVERY, s["steps"] + 1, LOG_EVERY)])
    for lr, rs in runs.items():
        band(ax, grid, on_grid(rs, "train_loss", grid), f"{lr:g}", color[lr])
        for step in (r.diverged_at for r in rs if r.diverged):  # at the top: its loss was inf
            ax.plot(step, 0.96, "x", color=color[lr], markersize=9, markeredgewidth=2,
                    transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.5 * lowest, 30)  # a blow-up leaves the top of the panel
    ax.set_xlabel("training step (batch of 32; log scale)")
    ax.set_ylabel(f"training loss (nats, mean of every {LOG_EVERY} steps)")
    ax.legend(fontsize=7, title="learning rate\n(x: diverged\nat that step)",
              title_fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Training loss of plain SGD at each learning rate\n"
                 "(digits MLP; mean, min-max over seeds)", fontsize=10)
    study.figure(fig, "loss_curves.png",
                 "Training curves per learning rate: the smallest rates crawl, the middle ones "
                 "fall fastest, the largest oscillate or blow up.")


def _setup(study, s) -> str:
    rates = ", ".join(f"{lr:g}" for lr in s["learning_rates"])
    return (
        f"scikit-learn's digits (1,257 training, 180 validation images of 8x8). An MLP with 2 "
        f"hidden ReLU layers of {WIDTH} (the default LeCun initialisation), no dropout, no "
        f"label smoothing. Plain SGD: momentum 0, constant learning rate (no warmup or decay), "
        f"batch {BATCH}, {s['steps']} steps ({s['steps'] * BATCH / 1257:.0f} epochs), at learning "
        f"rates {rates}. The final loss is the mean training loss over the last tenth of the "
        f"steps (the toolkit logs the mean of every {LOG_EVERY} steps); the initial loss is the "
        f"first step's. A run whose loss or gradient becomes inf or NaN is stopped by the "
        f"toolkit and counted as diverged; a run above the best rate that ends at chance "
        f"(validation accuracy <= 0.2) counts as stalled. Seeds "
        f"{', '.join(map(str, study.seeds))} change the initial weights and the batch order; "
        f"every rate sees the same ones. All runs train together as one compiled program "
        f"(`jax.vmap` over their states), each with its own rate, seed and batches.")


def _table(data) -> Table:
    rows = []
    for r in data["runs"]:
        ok = [x for x in r["final_loss"] if x is not None]
        n_div = sum(r["diverged"])
        rows.append([
            f"{r['learning_rate']:g}",
            spread(ok) if ok else "-",
            spread([100 * x for x in r["relative_decrease"] if x is not None]) if ok else "-",
            f"{np.mean([f / lo for f, lo in zip(r['final_loss'], r['lowest_loss']) if f]):.2f}"
            if ok else "-",
            spread([x for x in r["val_accuracy"] if x is not None]) if ok else "-",
            f"{n_div}/{len(r['diverged'])} (step "
            f"{', '.join(str(x) for x in r['diverged_at_step'] if x)})" if n_div else "0"])
    return Table("Loss after the run per learning rate (mean (min-max) over seeds; diverged runs "
                 "left out of the loss columns)",
                 ["learning rate", "final training loss", "loss removed (%)",
                  "final / lowest loss logged", "validation accuracy", "diverged"], rows)


def _stalled(r) -> list[bool]:
    """Per seed: trained without diverging but ended at chance (validation accuracy <= 0.2)."""
    return [not d and a <= 0.2 for d, a in zip(r["diverged"], r["val_accuracy"])]


def _failure_edge(data):
    """The smallest rate from which on every run at every larger rate diverged or stalled at
    chance (only above the best rate: below it, a run at chance is merely slow); or None."""
    edge = None
    for r in reversed(data["runs"]):
        if r["learning_rate"] <= data["best_learning_rate"] or not all(
                d or st for d, st in zip(r["diverged"], _stalled(r))):
            break
        edge = r
    return edge


def _failed_runs(data) -> list[dict]:
    edge = _failure_edge(data)
    return [r for r in data["runs"] if edge and r["learning_rate"] >= edge["learning_rate"]]


def _meaning(data) -> str:
    runs = data["runs"]
    best = next(r for r in runs if r["learning_rate"] == data["best_learning_rate"])
    edge, failed = _failure_edge(data), _failed_runs(data)
    text = (
        f"The claim holds, and the picture is sharper than the sentence. The slow side is "
        f"gradual: each factor of 10 below the best rate costs much of the progress, and at "
        f"{runs[0]['learning_rate']:g} the run has removed "
        f"{100 * np.mean(runs[0]['relative_decrease']):.1f} % of its starting loss in "
        f"{data['steps']} steps. The fast side is a cliff. ")
    above = [r for r in runs if best["learning_rate"] < r["learning_rate"]
             and r not in failed]
    if above:
        r = above[-1]
        ratios = [f / lo for f, lo in zip(r["final_loss"], r["lowest_loss"]) if f is not None]
        text += (f"Just above the best rate, at {r['learning_rate']:g}, the loss jumps around: "
                 f"runs end at {min(ratios):.1f} to {max(ratios):.0f} times the lowest loss they "
                 f"logged on the way, the oscillation the article mentions. ")
    if edge:
        diverged = [s for r in failed for s in r["diverged_at_step"] if s]
        stalled = sum(sum(_stalled(r)) for r in failed)
        text += (f"From {edge['learning_rate']:g} up nothing trains: {len(diverged)} runs "
                 f"blew up to inf/NaN within {max(diverged) if diverged else 0} steps")
        if stalled:
            text += (f", and {stalled} more stalled at chance (validation accuracy <= 0.2, loss "
                     f"near ln 10 = 2.30) with weights that stopped moving: the first huge "
                     f"updates can push every ReLU to its flat side, where no gradient flows, "
                     f"and the net never recovers. That 'dying ReLU' is a way to fail the "
                     f"article's sentence does not name")
        factor = edge["learning_rate"] / best["learning_rate"]
        text += (f". The best rate sits a factor {factor:.0f} below that edge, which is why "
                 f"the usual advice is to find the rate that diverges and back off by a factor "
                 f"of a few. ")
    by_val = min((r for r in runs if r not in failed and None not in r["val_loss"]),
                 key=lambda r: np.mean(r["val_loss"]))
    if by_val is not best:
        c = compare(by_val["val_loss"], best["val_loss"], log=True)
        text += (f"Judged by the mean validation loss the best rate is "
                 f"{by_val['learning_rate']:g}, not {best['learning_rate']:g}"
                 + (f" (lower on the paired seeds, p = {c.p:.2g}): the fastest optimisation "
                    f"also fits the 1,257 training images hardest." if c.verdict == "a" else
                    f", but the seeds do not separate the two (paired t-test on log loss, "
                    f"p = {c.p:.2g}: a tie)."))
    else:
        text += "The validation loss picks the same rate as the training loss."
    return text


def _literature(data) -> list[Cited]:
    runs = data["runs"]
    best = data["best_learning_rate"]
    finite = max(r["learning_rate"] for r in runs if not any(r["diverged"]))
    falling = max(r["learning_rate"] for r in runs if not any(r["above_start"]))
    rungs = round(np.log10(finite / best) / np.log10(np.sqrt(10)))  # ladder steps apart
    if rungs > 1 and falling != best:
        verdict = (f"disagrees: the best rate is {rungs} rungs of the ladder (a factor "
                   f"{finite / best:.0f}) below the largest without inf/NaN")
    else:
        verdict = "agrees" + (": the best rate is the largest at which every seed's loss "
                              "falls" if falling == best else "")
        if rungs == 1:
            verdict += (f"{',' if falling == best else ':'} one rung of the ladder (a factor "
                        f"{finite / best:.1f}) below the largest without inf/NaN; rungs a "
                        f"factor ~3 apart cannot resolve a factor of 2")
    bengio = Cited(
        "Bengio 2012, Practical recommendations for gradient-based training",
        "the optimal learning rate is usually close to (within a factor of 2 of) the largest "
        "rate that does not cause the training criterion to diverge",
        f"no seed's loss becomes inf/NaN up to {finite:g}; every seed's loss falls up to "
        f"{falling:g}; the best rate is {best:g}", verdict)
    ragged = [r["learning_rate"] for r in runs if r["learning_rate"] > best
              and 2 * sum(_ragged(r)) > len(r["final_loss"])]
    first_ragged = min(ragged) if ragged else None
    protocol = (f"not comparable in protocol: a fixed rate per run for {data['steps']} steps, "
                f"not one run with a rising rate")
    smith = Cited(
        "Smith 2017, Cyclical learning rates (the LR range test)",
        "raise the rate during a short run; where accuracy becomes ragged or falls is max_lr, "
        "and base_lr can be 1/3 or 1/4 of it",
        (f"with one fixed rate per run, training turns ragged from {first_ragged:g} (most "
         f"seeds end more than {RAGGED}x above their lowest loss); the best rate {best:g} is a "
         f"factor {first_ragged / best:.1f} below" if first_ragged else
         "no rate above the best turns ragged before the runs diverge"),
        ("agrees in spirit: the best fixed rate is about where their rule puts base_lr; "
         + protocol if first_ragged and 2.5 <= first_ragged / best <= 5 else protocol))
    return [bengio, smith]
