"""Scale: the zoo's parameter counts and FLOPs beside the article's numbers, and what more
parameters buy a small GPT on Tiny Shakespeare at a fixed budget of steps.

Counts come from the nets' shapes alone (`nets.count_params`); forward FLOPs from XLA's cost
analysis of the lowered forward pass, so nothing is allocated or compiled. The GPTs train
through the toolkit for the same number of steps and characters each.

Larger, on an accelerator: GPT sizes up to 12 layers of 768 (GPT-2 small) and thousands of
steps, for a loss-against-parameters curve over three orders of magnitude.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.ticker import NullFormatter

import nets
from experiments.studies.common import Cited, Table, band, compare, new_figure, spread

TITLE = "Scale: parameters, FLOPs and what they buy"
CLAIM = ("ResNets have tens of millions of parameters (ResNet-152: 60 million); the human brain "
         "has about 100 trillion synapses.")
SEEDS = 5

ARTICLE_RESNET152, BRAIN_SYNAPSES = 60e6, 100e12
# (layers, heads, width) of the GPTs trained, smallest first
GPT_SIZES = [(1, 2, 32), (2, 2, 64), (3, 4, 128), (4, 4, 192)]
QUICK_SIZES = [(1, 2, 32), (2, 2, 64)]


def settings(quick: bool) -> dict:
    if quick:
        return dict(nets=["mlp", "cnn", "resnet18", "resnet152"], sizes=QUICK_SIZES, steps=40,
                    context=32, batch=16, evals=1)
    return dict(nets=list(nets.NETS), sizes=GPT_SIZES, steps=300, context=64, batch=32, evals=4)


def run(study) -> dict:
    s = settings(study.quick)
    zoo = [_zoo_row(name) for name in s["nets"]]
    study.say(f"counted {len(zoo)} nets")
    study.plan(len(s["sizes"]) * len(study.seeds))
    gpts = []
    for layers, heads, width in s["sizes"]:
        runs = study.train_seeds(f"gpt-{layers}x{width}",
                                 lambda seed: _config(study, layers, heads, width, s, seed))
        gpts.append({"layers": layers, "heads": heads, "width": width,
                     "parameters": int(sum(x.size for x in jax.tree.leaves(
                         runs[0].summary["state"].params))),
                     "validation_loss": [r.test["loss"] for r in runs],
                     "curves": [r.curve("eval_loss")[1].tolist() for r in runs],
                     "curve_steps": runs[0].curve("eval_loss")[0].tolist()})
    for smaller, larger in zip(gpts, gpts[1:]):  # does each step up in size lower the loss?
        c = compare(larger["validation_loss"], smaller["validation_loss"])
        larger["against_smaller"] = {"verdict": c.verdict, "p": c.p}
    _plot(study, zoo, gpts, s)
    by_name = {r["name"]: r for r in zoo}
    r152 = by_name["resnet152"]["parameters"]
    largest = max(zoo, key=lambda r: r["parameters"])
    small, big = gpts[0], gpts[-1]
    finding = (
        f"ResNet-152 has {r152 / 1e6:.1f} million parameters here, the article's 60 million; "
        f"the largest net in the zoo ({largest['name']}, {largest['parameters'] / 1e6:.0f} "
        f"million) is {BRAIN_SYNAPSES / largest['parameters']:,.0f} times short of the brain's "
        f"100 trillion synapses. At a fixed budget of {s['steps']} steps, GPTs from "
        f"{small['parameters'] / 1e3:,.0f}k to {big['parameters'] / 1e3:,.0f}k parameters reach "
        f"validation losses of {spread(small['validation_loss'])} to "
        f"{spread(big['validation_loss'])} nats/char"
        + (", each size below the one before it on every seed" if _each_lower(gpts) else "")
        + f"; as a power law L ~ N^-alpha, alpha = {spread(_alphas(gpts))}.")
    data_out = {"zoo": zoo, "gpts": gpts, "article_resnet152": ARTICLE_RESNET152,
                "brain_synapses": BRAIN_SYNAPSES, "steps": s["steps"],
                "characters_per_step": s["batch"] * s["context"], "alphas": _alphas(gpts)}
    return {"finding": finding, "setup": _setup(study, s), "tables": _tables(zoo, gpts),
            "meaning": _meaning(gpts, s) if not study.quick else "",
            "literature": _literature(by_name["resnet152"], gpts) if not study.quick else [],
            "data": data_out}


def _each_lower(gpts) -> bool:
    """Whether every seed's validation loss falls at every step up in size."""
    return all(b < a for smaller, larger in zip(gpts, gpts[1:])
               for a, b in zip(smaller["validation_loss"], larger["validation_loss"]))


def _alphas(gpts) -> list[float]:
    """Per seed, the alpha of a power law L = (N_c / N)^alpha fitted to the validation losses:
    minus the least-squares slope of log(loss) against log(parameters)."""
    x = np.log([g["parameters"] for g in gpts])
    return [-float(np.polyfit(x, np.log([g["validation_loss"][i] for g in gpts]), 1)[0])
            for i in range(len(gpts[0]["validation_loss"]))]


def _zoo_row(name: str) -> dict:
    """Parameters and forward FLOPs of net `name` for one example of its typical input."""
    net = nets.NETS[name]
    model = nnx.eval_shape(lambda: nets.build(name, input_shape=net.input_shape,
                                              num_classes=net.num_classes))
    graphdef, state = nnx.split(model)
    dtype = jnp.int32 if len(net.input_shape) == 1 else jnp.float32
    x = jax.ShapeDtypeStruct((1, *net.input_shape), dtype)
    forward = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x, train=False))
    cost = forward.lower(state, x).cost_analysis() or {}
    parameters = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {"name": name, "parameters": int(parameters),
            "input": "x".join(map(str, net.input_shape)),
            "forward_flops": float(cost.get("flops", float("nan")))}


def _config(study, layers, heads, width, s, seed):
    return study.config(
        "shakespeare_gpt.py", "tiny", **{
            "seed": seed, "model.layers": layers, "model.heads": heads, "model.width": width,
            "dataset.context": s["context"], "dataset.batch_size": s["batch"],
            "dataset.eval_batch_size": 256, "optimizer.learning_rate": 2e-3,
            "optimizer.warmup_steps": s["steps"] // 10, "steps": s["steps"],
            "eval_every": s["steps"] // s["evals"], "log_every": 25})


def _plot(study, zoo, gpts, s):
    fig, axes = new_figure(2, 1, width=5.4, height=4.2)
    ax = axes[0, 0]
    counts = [r["parameters"] for r in zoo] + [ARTICLE_RESNET152, BRAIN_SYNAPSES]
    labels = [r["name"] for r in zoo] + ["ResNet-152 (article)", "brain synapses (article)"]
    colors = ["tab:blue"] * len(zoo) + ["tab:orange", "tab:red"]
    order = np.argsort(counts)
    # points, not bars: a bar on a log axis starts at an arbitrary left edge, and its length
    # would say nothing
    ax.scatter(np.array(counts)[order], np.arange(len(counts)), c=np.array(colors)[order], s=30,
               zorder=3)
    ax.set_yticks(np.arange(len(counts)), np.array(labels)[order], fontsize=8)
    for i, count in enumerate(np.array(counts)[order]):
        ax.annotate(_short(count), (count, i), textcoords="offset points", xytext=(6, -3),
                    fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(right=max(counts) * 300)
    ax.set_xlabel("parameters (log scale)")
    ax.set_title("The zoo against the article's numbers")
    ax = axes[0, 1]
    params = [g["parameters"] for g in gpts]
    band(ax, params, [[g["validation_loss"][i] for g in gpts] for i in range(len(study.seeds))],
         f"after {s['steps']} steps of {s['batch']}x{s['context']} characters",
         "tab:blue", marker="o")
    for g in gpts:
        ax.annotate(f"{g['layers']}x{g['width']}", (g["parameters"], np.mean(g["validation_loss"])),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("GPT parameters (log scale)")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title("Tiny Shakespeare at a fixed budget")
    ax.legend(fontsize=8)
    fig.suptitle("Scale (mean and min-max over seeds)")
    study.figure(fig, "scale.png",
                 "Left: parameter counts of the zoo, the article's ResNet-152 and the brain. "
                 "Right: character-level GPTs of growing size, same steps and data; labels are "
                 "layers x width.")


def _short(count: float) -> str:
    for unit, name in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if count >= unit:
            return f"{count / unit:.3g} {name}"
    return f"{count:.0f}"


def _setup(study, s) -> str:
    sizes = ", ".join(f"{l}x{w} ({h} heads)" for l, h, w in s["sizes"])
    return (
        f"Zoo: every net of `descent models` at its typical input; parameters from shapes "
        f"(batch-norm statistics excluded), forward FLOPs per example from XLA's cost analysis "
        f"of the lowered forward pass (multiply-adds count 2). GPTs: layers x width {sizes}, "
        f"context {s['context']}, batch {s['batch']}, {s['steps']} steps (warmup then cosine, "
        f"AdamW 2e-3, weight decay 0.1, clipping 1.0, no dropout), the same characters in the "
        f"same order for every size; validation loss over the held-out 10 % of the text. "
        f"Seeds {', '.join(map(str, study.seeds))} change the initial weights and the order.")


def _tables(zoo, gpts) -> list[Table]:
    zoo_rows = [[r["name"], r["input"], f"{r['parameters']:,}",
                 f"{r['forward_flops'] / 1e9:,.3g}"] for r in zoo]
    gpt_rows = [[f"{g['layers']} x {g['width']}", f"{g['parameters']:,}",
                 spread(g["validation_loss"]), _against_smaller(g)] for g in gpts]
    return [Table("The zoo", ["net", "input", "parameters", "forward GFLOP per example"],
                  zoo_rows),
            Table("GPTs at a fixed budget (the last column: a paired t-test over seeds against "
                  "the next smaller GPT)",
                  ["layers x width", "parameters", "validation loss (nats/char)",
                   "against the next smaller"], gpt_rows)]


def _against_smaller(g) -> str:
    if "against_smaller" not in g:
        return ""
    c = g["against_smaller"]
    word = {"a": "lower", "b": "higher", "tie": "tie"}[c["verdict"]]
    return f"{word} (p = {c['p']:.2g})"


def _meaning(gpts, s) -> str:
    monotone = all(g["against_smaller"]["verdict"] == "a" for g in gpts[1:])
    flops = [6 * g["parameters"] for g in gpts]
    return (
        "The article's numbers are right: ResNet-152's parameter count is 60 million to within "
        "a third of a percent. Its comparison with the brain is one of orders of magnitude: "
        "even GPT-2 small is some six orders short of 100 trillion synapses, and a synapse is "
        "not a parameter. At a fixed budget of steps, "
        + ("each larger GPT reached a lower validation loss (a paired t-test over the seeds at "
           "every step up)" if monotone else
           "more parameters did not always mean a lower validation loss by a paired t-test "
           "over the seeds")
        + " on this CPU scale. A fixed budget of steps is not a fixed budget of compute: at "
        f"about 6 N FLOPs per character for N parameters, the largest GPT cost "
        f"{flops[-1] / flops[0]:.0f} times the smallest's per step.")


def _literature(r152, gpts) -> list[Cited]:
    alphas = _alphas(gpts)
    return [
        Cited("He et al. 2016",
              "ResNet-152 at 224x224: 11.3 billion FLOPs, counted as multiply-adds",
              f"{r152['forward_flops'] / 2e9:.1f} billion multiply-adds (XLA's cost "
              f"analysis, {r152['forward_flops'] / 1e9:.1f} GFLOP)",
              "agrees" if abs(r152["forward_flops"] / 2e9 / 11.3 - 1) < 0.05 else
              "disagrees by more than 5 %"),
        Cited("Kaplan et al. 2020",
              "trained to convergence, a language model's test loss falls as a power of its "
              "non-embedding parameters, L ~ N^-0.076, over several orders of magnitude",
              f"alpha = {spread(alphas)} over {len(gpts)} GPTs "
              f"({gpts[0]['parameters']:,} to {gpts[-1]['parameters']:,} parameters, all "
              "counted)",
              "not comparable: these GPTs are far from converged after a fixed number of "
              "steps, read characters rather than tokens, and span only two orders of "
              "magnitude; the sign agrees"
              if min(alphas) > 0 else "disagrees: a larger GPT was not better on every seed"),
    ]
