"""Recurrent nets and memory: can an LSTM, with its sigmoid gates, carry information across
more steps than a plain tanh RNN, and what does it take?

The `recall` task: a sequence of T + 1 random one-hot tokens whose label is the first one, read
T steps before the answer; everything after it is a distractor, so the net must carry the first
token's identity across the whole sequence (chance: 1 / vocab). A tanh RNN (Elman), a GRU and an
LSTM of the same width with PyTorch's initialisation, and the same LSTM under the two published
initialisations of its forget gate: a bias of +1 (Jozefowicz et al. 2015, Keras's default) and
chrono initialisation (Tallec & Ollivier 2018, `model.chrono`). At every T each cell gets its
own Adam rate from a bracketed sweep (a rate that suits a short gap can fail a long one), and
every cell trains for the same number of steps; the report gives the fraction of seeds that
learn the task at each T.

Larger, on an accelerator: hidden 256, T up to 1,000 and more steps, to see where each
initialisation's memory ends.
"""
import functools

import ml_collections
import numpy as np

from experiments.studies.common import (Cited, Table, compare, extending, new_figure, spread,
                                        tune)

TITLE = "Recurrent nets: remembering across T steps"
CLAIM = "RNNs with tanh, LSTMs with sigmoid gates."
SEEDS = 5

VARIANTS = ("rnn", "gru", "lstm", "lstm_plus1", "lstm_chrono")
NAMES = {"rnn": "tanh RNN", "gru": "GRU", "lstm": "LSTM", "lstm_plus1": "LSTM (forget bias +1)",
         "lstm_chrono": "LSTM (chrono)"}
COLORS = {"rnn": "tab:red", "gru": "tab:green", "lstm": "tab:blue", "lstm_plus1": "tab:orange",
          "lstm_chrono": "tab:purple"}
MARKERS = {"rnn": "o", "gru": "^", "lstm": "s", "lstm_plus1": "v", "lstm_chrono": "D"}
VOCAB, HIDDEN, BATCH, EXAMPLES = 8, 64, 64, 40000
LR = 3e-3      # quick mode's rate for every cell (the default sweep's middle rung)
CLIP = 1.0     # global-norm clipping, as the toolkit's shakespeare_lstm.py: without it a tanh
               # RNN's gradient exploded (norm 359) mid-run in a probe
SOLVED = 0.95  # test accuracy that counts as having learned the task
AT_CHANCE = 0.05  # within this of chance, every seed of an arm has learned nothing


def settings(quick: bool) -> dict:
    if quick:  # one T, every cell at one rate: seconds
        return dict(variants=("rnn", "lstm", "lstm_chrono"), distances=(20,), steps=400,
                    evals=4, rates=(), extensions=0, sweep_seeds=0)
    return dict(variants=VARIANTS, distances=(5, 10, 20, 50, 100), steps=2000, evals=10,
                rates=(1e-3, 3e-3, 1e-2), extensions=1, sweep_seeds=2)


def run(study) -> dict:
    s = settings(study.quick)
    swept = study.seeds[:s["sweep_seeds"]] if s["rates"] else []
    rest = [seed for seed in study.seeds if seed not in swept]
    study.plan((len(swept) * len(s["rates"]) + len(rest)) * len(s["variants"])
               * len(s["distances"]))
    runs, rates, sweeps = {}, {}, {}  # runs: (variant, T) -> [Run per seed]
    for distance in s["distances"]:
        for v in s["variants"]:
            config = functools.partial(_config, study, v, distance, s)  # (lr, seed) -> config
            rate, first = LR, []
            if s["rates"]:  # this cell's rate at this T, from a sweep on the first seeds
                tuned = tune(study, f"{v}-T{distance}", config, s["rates"], score=_score,
                             extensions=s["extensions"], seeds=swept)
                rate, first = tuned.rate, tuned.runs
                sweeps.setdefault(v, {})[str(distance)] = {
                    "sweep": {f"{lr:g}": x for lr, x in tuned.sweep.items()},
                    "at_edge": tuned.at_edge}
            others = study.train_group([f"{v}-T{distance}-seed{seed}" for seed in rest],
                                       [config(rate, seed) for seed in rest]) if rest else []
            runs[v, distance] = first + others  # in seed order: the swept seeds come first
            rates.setdefault(v, {})[str(distance)] = rate

    data = {"distances": list(s["distances"]), "variants": list(s["variants"]),
            "steps": s["steps"], "chance": 1 / VOCAB, "solved_at": SOLVED,
            "sweep_seeds": swept, "rates": rates, "sweeps": sweeps, "accuracy": {},
            "diverged": {}, "solved": {}, "steps_to_solve": {}}
    for v in s["variants"]:
        for key in ("accuracy", "diverged", "solved", "steps_to_solve"):
            data[key][v] = {}
        for distance in s["distances"]:
            # a diverged run has no test accuracy (None): it did not learn the task
            accuracy = [r.test["accuracy"] if r.test else None for r in runs[v, distance]]
            data["accuracy"][v][str(distance)] = accuracy
            data["diverged"][v][str(distance)] = sum(a is None for a in accuracy)
            data["solved"][v][str(distance)] = sum(a is not None and a >= SOLVED
                                                   for a in accuracy)
            data["steps_to_solve"][v][str(distance)] = [_steps_to_solve(r)
                                                        for r in runs[v, distance]]
    data["comparisons"] = _comparisons(data)
    _plot_fraction_solved(study, data)
    _plot_accuracy_per_seed(study, data)
    _plot_learning_curves(study, runs, s)
    return {"finding": _finding(data), "setup": _setup(study, s), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "",
            "literature": _literature(data) if not study.quick else [], "data": data}


def _model(variant: str, distance: int) -> ml_collections.ConfigDict:
    cell = variant.split("_")[0]
    fields = {"name": cell, "hidden": HIDDEN, "layers": 1, "embed": VOCAB, "dropout": 0.0}
    if cell == "lstm":  # chrono's T_max: the sequence's length, so memory times reach T steps
        fields.update(forget_bias=1.0 if variant == "lstm_plus1" else 0.0,
                      chrono=distance + 1 if variant == "lstm_chrono" else 0)
    return ml_collections.ConfigDict(fields)


def _config(study, variant, distance, s, lr, seed):
    return study.config("digits_mlp.py", **{
        "seed": seed, "dataset.name": "recall", "dataset.distance": distance,
        "dataset.vocab": VOCAB, "dataset.num_examples": EXAMPLES, "dataset.batch_size": BATCH,
        "dataset.eval_batch_size": 1000, "model": _model(variant, distance),
        "optimizer.name": "adam", "optimizer.learning_rate": lr,
        "optimizer.schedule": "constant", "optimizer.clip_norm": CLIP,
        "optimizer.warmup_steps": 0, "loss.label_smoothing": 0.0, "steps": s["steps"],
        "eval_every": s["steps"] // s["evals"], "checkpoint.every": s["steps"], "log_every": 50})


def _score(r) -> float:
    """What each sweep minimises: the final validation loss (inf for a diverged run)."""
    return np.inf if r.diverged else r.last("eval_loss")


def _steps_to_solve(r) -> int | None:
    """The first evaluation step at which validation accuracy reached SOLVED, if any."""
    steps, acc = r.curve("eval_accuracy")
    reached = np.flatnonzero(acc >= SOLVED)
    return int(steps[reached[0]]) if len(reached) else None


def _longest_solved(data, variant) -> int | None:
    """The longest T up to which every seed of `variant` learned the task at every T."""
    longest = None
    for t in data["distances"]:
        if data["solved"][variant][str(t)] < len(data["accuracy"][variant][str(t)]):
            break
        longest = t
    return longest


# the pairs the report tests at every T: each initialisation against PyTorch's, the two
# published ones against each other, and the gated cells against the tanh RNN
PAIRS = (("lstm_chrono", "lstm"), ("lstm_plus1", "lstm"), ("lstm_chrono", "lstm_plus1"),
         ("lstm_plus1", "gru"), ("lstm_chrono", "rnn"), ("lstm", "rnn"), ("gru", "rnn"))


def _comparisons(data) -> dict:
    """{T: {"a vs b": {"verdict", "p", "words"}}}: paired t-tests on test accuracy. Two arms
    whose every seed stayed at chance are not tested: their accuracies differ only by the
    noise of guessing, which a t-test over 35 pairs would sometimes call a difference."""
    out = {}
    for t in data["distances"]:
        out[str(t)] = {}
        for a, b in PAIRS:
            if a not in data["variants"] or b not in data["variants"]:
                continue
            if _at_chance(data, a, t) and _at_chance(data, b, t):
                out[str(t)][f"{a} vs {b}"] = {
                    "verdict": "tie", "p": None,
                    "words": f"{NAMES[a]} and {NAMES[b]} both stay at chance in every seed"}
                continue
            c = compare(data["accuracy"][a][str(t)], data["accuracy"][b][str(t)],
                        lower_is_better=False)
            out[str(t)][f"{a} vs {b}"] = {"verdict": c.verdict, "p": c.p,
                                          "words": c.words(NAMES[a], NAMES[b])}
    return out


def _at_chance(data, v, t) -> bool:
    """Whether every seed of `v` at T = t ended within AT_CHANCE of chance (or diverged)."""
    return all(a is None or a < data["chance"] + AT_CHANCE for a in data["accuracy"][v][str(t)])


def _fraction(data, v, t) -> str:
    return f"{data['solved'][v][str(t)]}/{len(data['accuracy'][v][str(t)])}"


def _finding(data) -> str:
    longest = max(data["distances"])
    rated = ("each cell at one rate" if not data["sweeps"]
             else "each cell at its own rate, swept at every T")
    return (
        f"After {data['steps']} Adam steps ({rated}), the seeds that learned to recall a token "
        f"{longest} steps back (test accuracy >= {SOLVED}; chance {data['chance']:.3f}): "
        + ", ".join(f"{NAMES[v]} {_fraction(data, v, longest)}" for v in data["variants"])
        + "; the longest T up to which every seed learned the task: "
        + ", ".join(f"{NAMES[v]} {_longest_solved(data, v) or 'none'}"
                    for v in data["variants"]) + ".")


def _accuracy(data, v, t) -> str:
    """Test accuracy over the seeds that did not diverge, and how many did."""
    values = [a for a in data["accuracy"][v][str(t)] if a is not None]
    diverged = data["diverged"][v][str(t)]
    return ((spread(values) if values else "-")
            + (f" ({diverged} diverged)" if diverged else ""))


def _dodge(data) -> dict:
    """Multiplicative x offsets on the log T axis, so no cell's markers hide another's."""
    n = len(data["variants"])
    return {v: 1.12 ** (i - (n - 1) / 2) for i, v in enumerate(data["variants"])}


def _log_t_axis(ax, x):
    ax.set_xscale("log")
    ax.set_xticks(x, [str(t) for t in x])
    ax.minorticks_off()
    ax.set_xlim(x.min() / 1.4, x.max() * 1.4)


def _plot_fraction_solved(study, data):
    fig, axes = new_figure(1, 1, width=6.6, height=4.3)
    ax, x, dodge = axes[0, 0], np.array(data["distances"]), _dodge(data)
    for v in data["variants"]:
        seeds = np.array([len(data["accuracy"][v][str(t)]) for t in x])
        solved = np.array([data["solved"][v][str(t)] for t in x])
        ax.plot(x * dodge[v], solved / seeds, "-", color=COLORS[v], marker=MARKERS[v],
                markersize=6, label=NAMES[v])
    _log_t_axis(ax, x)
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel("T: steps between the token and the answer (log scale)")
    ax.set_ylabel(f"fraction of seeds with test accuracy >= {SOLVED}")
    ax.legend(fontsize=8)
    ax.set_title(f"Which cells learn to remember T steps back\n({data['steps']} Adam steps, "
                 f"hidden {HIDDEN}, {len(study.seeds)} seeds; markers offset sideways)",
                 fontsize=10)
    study.figure(fig, "fraction_solved.png",
                 "The fraction of seeds that learned the task, against the distance T to "
                 "remember, per cell and initialisation"
                 + (" (each at its own learning rate at every T)." if data["sweeps"] else
                    " (every cell at one learning rate)."))


def _plot_accuracy_per_seed(study, data):
    fig, axes = new_figure(1, 1, width=6.6, height=4.3)
    ax, x, dodge = axes[0, 0], np.array(data["distances"]), _dodge(data)
    for v in data["variants"]:
        for t in x:
            ys = np.array([a for a in data["accuracy"][v][str(t)] if a is not None])
            ax.plot(np.full(len(ys), t * dodge[v]), ys, MARKERS[v], color=COLORS[v],
                    alpha=0.6, markersize=5, label=NAMES[v] if t == x[0] else None)
            if data["diverged"][v][str(t)]:  # drawn at the bottom, never dropped
                ax.plot([t * dodge[v]], [0.02], "x", color=COLORS[v], markersize=7,
                        label=None)
                ax.annotate(f"{data['diverged'][v][str(t)]} diverged",
                            (t * dodge[v], 0.02), xytext=(4, 4),
                            textcoords="offset points", fontsize=7, color=COLORS[v])
    ax.axhline(data["chance"], color="gray", linestyle=":", label=f"chance (1/{VOCAB})")
    ax.axhline(SOLVED, color="gray", linestyle="--", linewidth=0.8,
               label=f"learned ({SOLVED})")
    _log_t_axis(ax, x)
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("T (log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="center left")
    ax.set_title("Every seed's test accuracy: outcomes are all or nothing", fontsize=10)
    study.figure(fig, "accuracy_per_seed.png",
                 "Each seed's test accuracy at every T: a seed either learns the task or stays "
                 "at chance, which is why the report counts seeds rather than averaging (a "
                 "cross at the bottom: seeds that diverged).")


CURVE_STYLES = {"rnn": "-", "gru": "--", "lstm": "-", "lstm_plus1": "-.", "lstm_chrono": ":"}


def _plot_learning_curves(study, runs, s):
    shown = [t for t in s["distances"] if t >= 20][-2:] or list(s["distances"][-1:])
    fig, axes = new_figure(len(shown), 1, width=4.8, height=3.8)
    for ax, distance in zip(axes[0], shown):
        for v in s["variants"]:
            for i, r in enumerate(runs[v, distance]):
                steps, acc = r.curve("eval_accuracy")
                # opaque, each cell its own dash: translucent lines of two cells that overlap
                # blend into a colour of neither (GRU over chrono read as grey, a third cell's)
                ax.plot(steps, acc, CURVE_STYLES[v], color=COLORS[v], linewidth=1.1,
                        label=NAMES[v] if i == 0 else None)
        ax.axhline(1 / VOCAB, color="gray", linestyle=":")
        ax.set_ylim(0, 1.03)
        ax.set_title(f"T = {distance}", fontsize=10)
        ax.set_xlabel("training step")
    axes[0, 0].set_ylabel("validation accuracy")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("Learning curves, one line per seed (dotted: chance)", fontsize=10)
    study.figure(fig, "learning_curves.png",
                 "Validation accuracy during training at the longest gaps, every seed: a line "
                 "on the dotted one has learned nothing yet.")


def _setup(study, s) -> str:
    swept = study.seeds[:s["sweep_seeds"]]
    rates = (f"At every T, each cell's Adam rate comes from its own sweep: seeds "
             f"{', '.join(map(str, swept))} at {', '.join(f'{r:g}' for r in s['rates'])} "
             f"(constant), the rate with the lowest mean final validation loss kept (a rate "
             f"at which a seed diverged loses), {extending(s['extensions'])}; the other seeds "
             f"then train at that rate, and the swept seeds' runs at it are reused, which "
             f"favours every cell alike. The sweep is repeated at every T because a rate "
             f"tuned on a short gap does not carry over: a sweep at T = 10 picks 0.03 for "
             f"chrono initialisation, and an earlier form of this study that kept each "
             f"cell's T = 10 rate at every T left all 5 chrono seeds at chance at T = 100 "
             f"after 2,000 steps"
             if s["rates"] else f"Every cell at Adam's rate {LR:g} (quick mode: no sweep)")
    return (
        f"The toolkit's `recall` dataset: {EXAMPLES:,} sequences of T + 1 one-hot tokens from a "
        f"vocabulary of {VOCAB} (70 / 10 / 20 % train / validation / test), label = the first "
        f"token, T in {', '.join(map(str, s['distances']))}. "
        f"{', '.join(NAMES[v] for v in s['variants'])}: {HIDDEN} hidden units, one layer, "
        f"reading one token per step; the class is read from the last step's hidden state. "
        f"The cells follow PyTorch's equations and initialisation (uniform +-1/sqrt({HIDDEN}) "
        f"for every weight and bias, so every gate starts near 0.5). The LSTM's two other "
        f"arms differ only in the biases of its gates: `model.forget_bias=1` adds 1 to the "
        f"forget gate's (Keras's `unit_forget_bias`, after Jozefowicz et al. 2015); "
        f"`model.chrono=T+1` sets the forget gate's to log(u), u uniform in [1, T], and the "
        f"input gate's to its negative (Tallec & Ollivier 2018), so the units' initial memory "
        f"times spread over 1 to T steps. {rates}. Batch {BATCH}, {s['steps']} steps at every "
        f"T (validation accuracy every {s['steps'] // s['evals']} steps for the curves; the "
        f"final weights are tested). A seed counts as having learned the task when its test "
        f"accuracy reaches {SOLVED}: outcomes are all or nothing, so the report counts seeds. "
        f"Pairs of arms are compared on test accuracy by a paired t-test over the seeds. "
        f"Gradients are clipped to global norm {CLIP:g} for every cell, as in the toolkit's "
        f"shakespeare_lstm.py. {EXAMPLES:,} sequences, because with 6,000 a probe LSTM "
        f"memorised its 4,200 training sequences instead of learning the rule. Seeds "
        f"{', '.join(map(str, study.seeds))} change the initial weights and the batch order "
        f"(the sequences are the same).")


def _tables(data) -> list[Table]:
    rows = []
    for t in data["distances"]:
        row = [t]
        for v in data["variants"]:
            solved = [x for x in data["steps_to_solve"][v][str(t)] if x is not None]
            rate = f" at lr {data['rates'][v][str(t)]:g}" if data["sweeps"] else ""
            row += [_fraction(data, v, t) + rate
                    + (f" (median step {int(np.median(solved))})" if solved else ""),
                    _accuracy(data, v, t)]
        rows.append(row)
    header = ["T"] + [h for v in data["variants"]
                      for h in (f"{NAMES[v]}: seeds learned", "test accuracy")]
    tables = [Table(f"Seeds that learned the task (test accuracy >= {SOLVED}) at each cell's "
                    f"rate for that T, with the median step at which they first reached it in "
                    f"validation, and the test accuracy (mean (min-max) over seeds)",
                    header, rows)]
    if data["sweeps"]:
        seeds = ", ".join(map(str, data["sweep_seeds"]))
        tables.append(Table(
            f"Each cell's learning-rate sweep at every T (seeds {seeds}): mean final "
            f"validation loss per rate (inf: a seed diverged)", ["cell", "T", "rate used",
                                                                  "sweep"],
            [[NAMES[v], t, f"{data['rates'][v][str(t)]:g}"
              + (" (edge)" if data["sweeps"][v][str(t)]["at_edge"] else ""),
              ", ".join(f"{lr}: {x:.3g}" for lr, x in data["sweeps"][v][str(t)]["sweep"].items())]
             for v in data["variants"] for t in data["distances"]]))
    pairs = list(data["comparisons"][str(data["distances"][0])])
    tables.append(Table(
        "Paired comparisons of test accuracy over seeds (t-test, two-sided; 'tie' where "
        f"p >= 0.05; 'both at chance': no seed of either arm above {AT_CHANCE} over chance, "
        "so nothing to compare)",
        ["T"] + [" vs ".join(NAMES[v] for v in p.split(" vs ")) for p in pairs],
        [[t] + [_verdict(data, t, p) for p in pairs] for t in data["distances"]]))
    return tables


def _verdict(data, t, pair) -> str:
    c = data["comparisons"][str(t)][pair]
    a, b = pair.split(" vs ")
    if c["p"] is None:
        return "both at chance"
    winner = {"a": NAMES[a], "b": NAMES[b], "tie": "tie"}[c["verdict"]]
    return f"{winner} (p = {c['p']:.2g})"


def _meaning(data) -> str:
    longest = max(data["distances"])
    reach = {v: _longest_solved(data, v) for v in data["variants"]}
    words = lambda t, pair: data["comparisons"][str(t)][pair]["words"]
    return (
        "The article pairs RNNs with tanh and LSTMs with sigmoid gates, implying that the "
        "gates let an LSTM remember where a tanh RNN cannot. With the initialisation PyTorch "
        "uses, every gate starts near 0.5: the LSTM's cell keeps about half its content per "
        "step while each distractor writes into it, so both its memory of the first token and "
        "the gradient that would teach the forget gate to keep it shrink like 2^-T. Measured "
        "with each cell at its own rate at every T, every seed learned the task up to T = "
        + ", ".join(f"{reach[v] or 'none'} ({NAMES[v]})" for v in data["variants"])
        + f". At T = {longest}: {words(longest, 'lstm_chrono vs lstm')}; "
        f"{words(longest, 'lstm_plus1 vs lstm')}; {words(longest, 'lstm_chrono vs lstm_plus1')}"
        f"; {words(longest, 'lstm vs rnn')}. "
        + ("So the plain gated cells do not by themselves beat the tanh RNN on this task. "
           if all((reach[v] or 0) <= (reach["rnn"] or 0) for v in ("lstm", "gru")) else "")
        + "A gate holds a value only while its sigmoid is near 1, and a unit whose forget gate "
        "is f forgets with a time constant of 1 / (1 - f) steps: 2 steps for PyTorch's bias "
        "near 0, 1 + e = 3.7 for a bias of +1, and 2 to T + 1 steps under chrono "
        "initialisation, which spreads the units' time constants over the gap the task "
        "needs. Where the forget gate starts out forgetting, learning to hold is itself a "
        "long-range problem.")


def _literature(data) -> list[Cited]:
    longest = max(data["distances"])
    frac = lambda v, t=longest: _fraction(data, v, t)
    return [
        Cited("Hochreiter & Schmidhuber 1997",
              "the LSTM bridges time lags of over 1,000 steps on synthetic tasks where "
              "recurrent nets trained by backpropagation through time fail",
              f"plain LSTM {frac('lstm')} seeds at T = {longest}, tanh RNN {frac('rnn')}; "
              f"chrono LSTM {frac('lstm_chrono')}",
              _hochreiter(data)),
        Cited("Jozefowicz et al. 2015",
              "adding 1 to the forget gate's bias brings the LSTM level with the GRU on most "
              "of their tasks; they recommend it for every LSTM",
              f"at T = {longest}: +1 {frac('lstm_plus1')}, plain {frac('lstm')}, GRU "
              f"{frac('gru')} seeds",
              _agreement(data, "lstm_plus1", "lstm") + "; against the GRU: "
              + _against_gru(data)),
        Cited("Tallec & Ollivier 2018",
              "chrono initialisation lets an LSTM solve copy and adding tasks with gaps of "
              "hundreds of steps where the standard initialisation fails",
              f"chrono {frac('lstm_chrono')} seeds at T = {longest}, against plain "
              f"{frac('lstm')} and +1 {frac('lstm_plus1')}",
              _agreement(data, "lstm_chrono", "lstm")),
        Cited("Bengio, Simard & Frasconi 1994",
              "learning long-term dependencies by gradient descent gets harder as the span "
              "grows: a tanh RNN's gradient from far back vanishes",
              "tanh RNN: " + ", ".join(f"T = {t} {frac('rnn', t)}" for t in data["distances"]),
              "agrees" if data["solved"]["rnn"][str(longest)] < data["solved"]["rnn"][
                  str(data["distances"][0])] else "disagrees: the tanh RNN learned every T"),
    ]


def _against_gru(data) -> str:
    """+1 against the GRU at the longest T where at least one of them learned something."""
    compared = [t for t in data["distances"]
                if data["comparisons"][str(t)]["lstm_plus1 vs gru"]["p"] is not None]
    t = (compared or data["distances"])[-1]
    return f"at T = {t}, " + data["comparisons"][str(t)]["lstm_plus1 vs gru"]["words"]


def _hochreiter(data) -> str:
    t = str(max(data["distances"]))
    holding = [v for v in ("lstm_chrono", "lstm_plus1")
               if data["solved"][v][t] > max(data["solved"]["lstm"][t], data["solved"]["rnn"][t])]
    caveat = ("; their LSTM had no forget gate (its cell always kept its content), which a "
              "forget gate initialised near 0.5 does not")
    if data["solved"]["lstm"][t] > data["solved"]["rnn"][t]:
        return "agrees" + caveat
    if holding:
        return ("agrees only for an LSTM whose forget gate starts out holding ("
                + ", ".join(NAMES[v] for v in holding) + ")" + caveat)
    return "disagrees: no LSTM here outlasted the tanh RNN" + caveat


def _agreement(data, better, plain) -> str:
    """Whether `better` beat `plain` at the longest T, and if not, at which shorter T it did."""
    longest = max(data["distances"])
    c = data["comparisons"][str(longest)][f"{better} vs {plain}"]
    if c["verdict"] == "a":
        return f"agrees (paired t-test, p = {c['p']:.2g})"
    there = ("both stay at chance in every seed" if c["p"] is None else
             f"a {'tie' if c['verdict'] == 'tie' else 'reversal'} (paired t-test, "
             f"p = {c['p']:.2g})")
    shorter = [t for t in data["distances"]
               if data["comparisons"][str(t)][f"{better} vs {plain}"]["verdict"] == "a"]
    if not shorter:
        return f"not shown here: at T = {longest} {there}"
    t = shorter[-1]
    p = data["comparisons"][str(t)][f"{better} vs {plain}"]["p"]
    return (f"agrees only up to T = {t}, where {NAMES[better]} learned in "
            f"{_fraction(data, better, t)} seeds and {NAMES[plain]} in "
            f"{_fraction(data, plain, t)} (paired t-test, p = {p:.2g}); at T = {longest} {there}")
