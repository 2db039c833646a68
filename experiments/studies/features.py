"""Features: do early layers respond to edges and textures and deeper ones to shapes and parts?

The MNIST CNN of `experiments/configs/mnist_cnn.py` (two conv blocks of 3x3 convolutions, ReLU
and 2x2 max-pooling, then a dense layer), trained for one epoch. Its first-layer filters and
each block's activation maps are drawn; a linear probe (scikit-learn's logistic regression on
the frozen features) is fitted on every layer and on the raw pixels, and scored on test images.
Two controls say what a layer's score owes to what: the same net untrained (its initial
weights: what the architecture gives for free), and random ReLU features of the pixels as wide
as the layer (a fixed Gaussian matrix, then ReLU: what that many nonlinear dimensions give with
no convolution, pooling or learning). Every comparison is paired over the seeds.

Larger, on an accelerator: several epochs instead of one, and probes on all 60,000 images.
"""
import functools
import time

import jax
import numpy as np
from flax import nnx
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import nets
from data.arrays import scale
from data.tfds_source import data_source
from experiments.studies.common import Cited, Compared, Table, band, compare, new_figure, spread
from nets.activations import activation

TITLE = "What each layer of a CNN represents"
CLAIM = "Early layers respond to edges and textures, deeper layers to shapes and parts."
SEEDS = 5

KERNEL, POOL = 3, 2          # mnist_cnn.py's 3x3 convolutions and 2x2 max-pooling (stride 2)
PROBE_C = 0.1                # the probes' inverse L2 strength, on standardised features
PROBE_SEED = 1234            # fixes which images the probes are fitted and scored on
SHOWN_DIGITS = (0, 2, 7)      # the test digits whose activation maps are drawn
KINDS = ("trained", "untrained", "random")  # the three representations probed at each width
KIND_WORDS = {"trained": "trained CNN", "untrained": "untrained CNN",
              "random": "random ReLU features"}
KIND_COLORS = {"trained": "tab:blue", "untrained": "tab:gray", "random": "tab:green"}
# the paired comparisons made at every layer: (a, b), each a kind or "pixels"
PAIRS = (("trained", "untrained"), ("trained", "random"), ("untrained", "random"),
         ("trained", "pixels"), ("untrained", "pixels"), ("random", "pixels"))


def settings(quick: bool) -> dict:
    if quick:  # the small CNN of mnist_cnn.py:tiny on 1,000 images: seconds
        return dict(variant="tiny", train_examples=1000, steps=150, batch=32,
                    probe_train=1000, probe_test=2000)
    return dict(variant="", train_examples=0, steps=469, batch=128,  # one epoch of 60,000
                probe_train=5000, probe_test=10000)


def receptive_fields(blocks: int, kernel: int = KERNEL, pool: int = POOL) -> list[int]:
    """The side, in input pixels, of the patch that one unit of each block's output sees: a
    k x k convolution widens it by (k - 1) x the current stride, a pool by (p - 1) x stride,
    and each pool doubles the stride."""
    side, stride, sides = 1, 1, []
    for _ in range(blocks):
        side += (kernel - 1) * stride
        side += (pool - 1) * stride
        stride *= pool
        sides.append(side)
    return sides


def random_relu_features(pixels_NxP: np.ndarray, width: int, seed: int) -> np.ndarray:
    """ReLU(x W) for a fixed W of `width` Gaussian columns drawn from `seed`: random features
    of the pixels, nonlinear as a layer is, but with no convolution, pooling or learning. (A
    linear random projection would be no control: its span lies inside the pixels', so a linear
    probe on it can do no better than one on the pixels.) W's scale does not matter: ReLU is
    positively homogeneous and the probe standardises its features."""
    w_PxW = np.random.default_rng([seed, width]).standard_normal(
        (pixels_NxP.shape[1], width), dtype=np.float32)
    return np.maximum(pixels_NxP @ w_PxW, 0.0)


def run(study) -> dict:
    s = settings(study.quick)
    study.plan(len(study.seeds))
    train_x, train_y = _mnist(study.data_dir, "train", s["probe_train"])
    test_x, test_y = _mnist(study.data_dir, "test", s["probe_test"])
    pixels = train_x.reshape(len(train_x), -1), test_x.reshape(len(test_x), -1)
    pixel_probe = _probe(pixels[0], train_y, pixels[1], test_y)

    runs = study.train_seeds("mnist-cnn", lambda seed: _config(study, s, seed))
    per_seed, models = [], {}
    for seed, trained_run in zip(study.seeds, runs):
        models[seed] = _models(trained_run, train_x.shape[1:])
        per_seed.append(_probe_seed(study, seed, models[seed], trained_run, (train_x, train_y),
                                    (test_x, test_y), pixels))

    data = _summary(per_seed, pixel_probe, test_x.shape[1], s)
    first = study.seeds[0]
    _plot_probes(study, data)  # the headline figure first: the gallery's index shows it
    _plot_filters(study, models[first], s["steps"], data["filter_change"][0])
    _plot_activation_maps(study, models[first]["trained"], test_x, test_y)
    return {"finding": _finding(data), "setup": _setup(study, s, data), "tables": _tables(data),
            "meaning": _meaning(data) if not study.quick else "",
            "literature": _literature(data), "data": data}


def _models(trained_run, input_shape) -> dict:
    """The run's net after training, and at its initial weights: rebuilt from the run's seed
    and model fields, the very starting point the run drew."""
    summary = trained_run.summary
    trained = nnx.merge(summary["trainer"].graphdef, summary["state"].params,
                        summary["state"].model_state)
    config = trained_run.config
    fields = {k: v for k, v in config.model.items() if k != "name"}
    initial = nets.build("cnn", input_shape=input_shape, num_classes=10, seed=config.seed,
                         **fields)
    return {"trained": trained, "untrained": initial}


def _probe_seed(study, seed, models, trained_run, train, test, pixels) -> dict:
    """One seed's probes: every layer of the trained and the untrained net, and random ReLU
    features as wide as each layer (drawn from this seed), all fitted and scored alike."""
    before, after = _first_filters(models["untrained"]), _first_filters(models["trained"])
    change = np.linalg.norm(after - before) / np.linalg.norm(before)
    row = {"seed": seed, "cnn_test_accuracy": trained_run.test["accuracy"],
           "filter_change": float(change)}
    for kind, model in models.items():
        start = time.perf_counter()
        train_f, test_f = _layers(model, train[0]), _layers(model, test[0])
        row[kind] = {name: _probe(train_f[name], train[1], test_f[name], test[1])
                     for name in train_f}
        row.setdefault("width", {n: f.shape[1] for n, f in train_f.items()})
        study.say(f"seed {seed}, {kind} probes: " + ", ".join(
            f"{k} {v:.3f}" for k, v in row[kind].items())
            + f" ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    row["random"] = {name: _probe(random_relu_features(pixels[0], width, seed), train[1],
                                  random_relu_features(pixels[1], width, seed), test[1])
                     for name, width in row["width"].items()}
    study.say(f"seed {seed}, random ReLU features as wide as each layer: " + ", ".join(
        f"{row['width'][k]:,} {v:.3f}" for k, v in row["random"].items())
        + f" ({time.perf_counter() - start:.1f} s)")
    return row


def _summary(per_seed, pixel_probe, image_side, s) -> dict:
    """Every probe's score by kind, layer and seed, and the paired comparisons between them."""
    names = list(per_seed[0]["trained"])
    sides = receptive_fields(len(names) - 1)
    data = {
        "layers": names,
        "width": per_seed[0]["width"],
        "receptive_field_px": dict(zip(names, [*sides, image_side])),
        "pixels": pixel_probe, "pixel_width": image_side * image_side,
        **{kind: {n: [r[kind][n] for r in per_seed] for n in names} for kind in KINDS},
        "cnn_test_accuracy": [r["cnn_test_accuracy"] for r in per_seed],
        # how far training moved the first-layer filters, relative to their initial norm
        "filter_change": [r["filter_change"] for r in per_seed],
        "probe_train": s["probe_train"], "probe_test": s["probe_test"],
    }
    seeds = len(per_seed)

    def scores(kind, layer):  # the pixels have one probe, no seed: its score for every seed
        return [pixel_probe] * seeds if "pixels" in (kind, layer) else data[kind][layer]

    # Accuracy: higher is better. Against the pixels the paired test is in effect a one-sample
    # t-test of the seeds' scores against the pixels' one score.
    data["compared"] = {n: {f"{a} vs {b}": compare(scores(a, n), scores(b, n),
                                                   lower_is_better=False)._asdict()
                            for a, b in PAIRS} for n in names}
    # each layer against the one below it (block 1 against the pixels), trained and untrained
    data["deeper"] = {n: {"below": b, **{kind: compare(scores(kind, n), scores(kind, b),
                                                       lower_is_better=False)._asdict()
                                         for kind in ("trained", "untrained")}}
                      for n, b in zip(names, ["pixels", *names[:-1]])}
    return data


def _config(study, s, seed):
    return study.config("mnist_cnn.py", s["variant"], **{
        "seed": seed, "dataset.train_examples": s["train_examples"],
        "dataset.batch_size": s["batch"], "steps": s["steps"], "eval_every": s["steps"],
        "checkpoint.every": s["steps"], "log_every": 50,
        # evaluation in batches of 1,000 (the tiny variant's 64 made the five nets' one
        # evaluation and one test cost more than their training)
        "dataset.eval_batch_size": 1000,
        # The seeds train as one vmapped program. On CPU, XLA runs a vmapped convolution as a
        # grouped one, measured 15x slower per net than the net alone (a 2-core CPU, the
        # 32/64-channel net); as im2col's matmuls the five cost what five nets alone do. The
        # parameters are nnx.Conv's either way.
        "model.conv_impl": "im2col" if jax.default_backend() == "cpu" else "auto",
        "optimizer.warmup_steps": min(100, s["steps"] // 5)})


def _mnist(data_dir: str, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of `split` drawn by PROBE_SEED, scaled as the toolkit scales them for the CNN.
    Only these are decoded: the CNN's run decodes all 70,000 itself, which takes seconds."""
    source = data_source("mnist", split, data_dir or None)
    picked = np.sort(np.random.default_rng(PROBE_SEED).permutation(len(source))[:n])
    examples = source.__getitems__(picked.tolist())
    images = np.stack([np.asarray(e["image"]) for e in examples])
    labels = np.array([int(e["label"]) for e in examples])
    return scale({"inputs": images})["inputs"], labels


def _layers(model, images, batch: int = 1000) -> dict[str, np.ndarray]:
    """Every layer's output for `images`, flattened: each conv block's (after conv, ReLU and
    pooling) and the dense layer's (after ReLU), the input of the net's linear head."""
    graphdef, state = nnx.split(model)
    outs = [_forward(graphdef, state, images[i:i + batch]) for i in range(0, len(images), batch)]
    names = [f"block {i + 1}" for i in range(len(outs[0]) - 1)] + ["dense"]
    return {name: np.concatenate([np.asarray(o[k]) for o in outs])
            for k, name in enumerate(names)}


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    net = nnx.merge(graphdef, state)
    blocks = net.blocks(x)
    dense = activation(net.act)(net.dense(blocks[-1].reshape(len(x), -1)))
    return [b.reshape(len(x), -1) for b in blocks] + [dense]


def _probe(train_f, train_y, test_f, test_y) -> float:
    """Test accuracy of a logistic regression fitted on frozen, standardised features."""
    # One BLAS thread: these fits are small, and on a busy 2-core machine OpenBLAS's threads
    # contending with XLA's made them 50-100x slower (measured: 15 s against 0.15 s).
    with threadpool_limits(1):
        scaler = StandardScaler().fit(train_f)
        probe = LogisticRegression(C=PROBE_C, max_iter=300)
        probe.fit(scaler.transform(train_f), train_y)
        return float(probe.score(scaler.transform(test_f), test_y))


def _first_filters(model) -> np.ndarray:
    return np.asarray(model.convs[0].kernel[...])[:, :, 0, :]  # (3, 3, filters)


def _plot_filters(study, models, steps, change, shown: int = 16):
    initial, trained = _first_filters(models["untrained"]), _first_filters(models["trained"])
    total = initial.shape[-1]
    initial, trained = initial[..., :shown], trained[..., :shown]
    fig = Figure(figsize=(10.0, 3.9), layout="constrained")
    panels = {"at initialisation": initial, f"after {steps} training steps": trained,
              f"the change ({change:.0%} of the initial norm)": trained - initial}
    # one colour scale for the filters before and after training, so they compare; the change
    # has its own, shared by every filter
    weights_limit = float(max(np.abs(initial).max(), np.abs(trained).max()))
    limits = [weights_limit, weights_limit, float(np.abs(trained - initial).max())]
    for panel, (title, kernel), limit in zip(fig.subfigures(1, 3, wspace=0.03), panels.items(),
                                             limits):
        count = kernel.shape[-1]
        cols = int(np.ceil(np.sqrt(count)))
        axes = panel.subplots(-(-count // cols), cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if i < count:
                ax.imshow(kernel[:, :, i], cmap="RdBu_r", vmin=-limit, vmax=limit,
                          interpolation="nearest")
        panel.suptitle(title, fontsize=10)
    fig.suptitle(f"First-layer 3x3 filters of the MNIST CNN ({min(shown, total)} of {total}, "
                 f"seed {study.seeds[0]};\nred: positive weight, blue: negative; before and after "
                 f"on one colour scale, the change on another)", fontsize=10)
    study.figure(fig, "first_layer_filters.png",
                 "First-layer filters of one net before and after training, in the same "
                 "order, and what training changed. A filter with a positive and a negative "
                 "side responds to an edge across it, trained or not.")


def _plot_activation_maps(study, model, images, labels, channels: int = 4):
    picked = [int(np.flatnonzero(labels == d)[0]) for d in SHOWN_DIGITS]
    blocks = [np.asarray(b) for b in model.blocks(images[picked])]
    # the channels that respond most, on average, to the digits shown
    chosen = [np.argsort(b.mean(axis=(0, 1, 2)))[::-1][:channels] for b in blocks]
    sides = receptive_fields(len(blocks))
    fig, axes = new_figure(1 + channels * len(blocks), len(picked), width=1.05, height=1.15)
    for row, index in enumerate(picked):
        axes[row, 0].imshow(images[index, :, :, 0], cmap="gray_r")
        axes[row, 0].set_ylabel(f"digit {labels[index]}")
        for b, (out, keep) in enumerate(zip(blocks, chosen)):
            for j, c in enumerate(keep):
                ax = axes[row, 1 + b * channels + j]
                ax.imshow(out[row, :, :, c], cmap="magma", interpolation="nearest")
                if row == 0:
                    ax.set_title(f"block {b + 1}\nchannel {c}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    axes[0, 0].set_title("input\n28x28", fontsize=7)
    fig.suptitle(f"Activation maps: block 1 (14x14, each unit sees {sides[0]}x{sides[0]} px), "
                 f"block 2 (7x7, {sides[1]}x{sides[1]} px); the 4 most active channels",
                 fontsize=9)
    study.figure(fig, "activation_maps.png",
                 "What the trained blocks compute from three test digits (bright = strong "
                 "response). Block 1's maps trace the strokes; block 2's are sparse, each "
                 "lighting up at the few places where one kind of stroke part sits.")


def _plot_probes(study, data):
    names, seeds = data["layers"], len(data["cnn_test_accuracy"])
    fig, axes = new_figure(2, 1, width=5.6, height=5.0)
    ax = axes[0, 0]
    x = np.arange(len(names) + 1)
    labels = [f"pixels\n1x1 px\n{data['pixel_width']:,}"] + [
        f"{n}\n{data['receptive_field_px'][n]}x{data['receptive_field_px'][n]} px\n"
        f"{data['width'][n]:,}" for n in names]
    for kind in ("trained", "untrained"):
        ys = [[data["pixels"]] + [data[kind][n][i] for n in names] for i in range(seeds)]
        band(ax, x, ys, f"probe on the {KIND_WORDS[kind]}", KIND_COLORS[kind], marker="o")
    ys = [[data["random"][n][i] for n in names] for i in range(seeds)]
    band(ax, x[1:], ys, "probe on random ReLU features\nof the pixels, as wide as the layer",
         KIND_COLORS["random"], linestyle="--", marker="s")
    ax.axhline(data["pixels"], color="tab:red", linestyle="--", linewidth=1,
               label="probe on raw pixels")
    ax.axhline(np.mean(data["cnn_test_accuracy"]), color="black", linestyle=":", linewidth=1,
               label="the trained CNN itself")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("layer (receptive field; dimensions)")
    ax.set_ylabel("test accuracy of a linear probe")
    # below the axes: inside, it hid the narrowest random features' low score
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    ax.set_title(f"Linear probes on frozen features ({data['probe_train']:,} training, "
                 f"{data['probe_test']:,} test images;\nmean and min-max over {seeds} seeds)",
                 fontsize=10)
    _plot_differences(axes[0, 1], data)
    study.figure(fig, "probes.png",
                 "Left: logistic regression on each layer's frozen output, for the trained net, "
                 "for the same net at its initial weights, and for random ReLU features of the "
                 "pixels as wide as the layer, against the same probe on the pixels. Right: the "
                 "same scores as paired differences, one point per seed; a filled point marks a "
                 "difference a paired t-test over the seeds finds (p < 0.05), a hollow one a tie.")


def _plot_differences(ax, data):
    names = data["layers"]
    pairs = (("trained", "untrained", "tab:purple", "trained - untrained: what training adds"),
             ("untrained", "random", "tab:orange",
              "untrained - random features: what the\narchitecture adds over as many dimensions"),
             ("trained", "random", "tab:blue", "trained - random features"))
    for k, (a, b, color, label) in enumerate(pairs):
        for j, n in enumerate(names):
            d = np.array(data[a][n]) - np.array(data[b][n])
            at = j + (k - 1) * 0.25 + np.linspace(-0.05, 0.05, len(d))
            found = data["compared"][n][f"{a} vs {b}"]["verdict"] != "tie"
            ax.scatter(at, d, s=18, color=color, facecolors=color if found else "none",
                       label=label if j == 0 else None)
            ax.plot([at[0] - 0.03, at[-1] + 0.03], [d.mean()] * 2, color=color, linewidth=1.5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)), [f"{n}\n{data['width'][n]:,}" for n in names],
                  fontsize=8)
    ax.set_xlabel("layer (dimensions)")
    ax.set_ylabel("difference in probe test accuracy")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    ax.set_title("Paired differences, one point per seed (bar: mean;\nfilled: paired t-test "
                 "p < 0.05, hollow: tie)", fontsize=10)


def _setup(study, s, data) -> str:
    net = ("mnist_cnn.py's tiny variant (8 and 16 channels, dense 32)" if s["variant"]
           else "mnist_cnn.py (32 and 64 channels of 3x3, ReLU, 2x2 max-pool; dense 128)")
    fields = ", ".join(f"{n} {side}x{side} px" for n, side in data["receptive_field_px"].items())
    widths = ", ".join(f"{n} {w:,}" for n, w in data["width"].items())
    seeds = len(study.seeds)
    return (
        f"MNIST. The CNN of {net}, trained with Adam (warmup-cosine, lr 2e-3, the config's "
        f"rate) for {s['steps']} steps of {s['batch']} on "
        + (f"{s['train_examples']:,} training images" if s["train_examples"]
           else "the 60,000 training images (one epoch)")
        + f"; it is the study's one trained net, so no rates are swept (the arms compared are "
          f"representations, each scored by the same probe). Linear probes: scikit-learn's "
          f"LogisticRegression (L2, C={PROBE_C}, lbfgs, 300 iterations) on standardised, "
          f"flattened frozen features of {s['probe_train']:,} training images, scored on "
          f"{s['probe_test']:,} test images (the same images for every representation and "
          f"seed). C was fixed once for every representation rather than tuned per layer, so "
          f"no layer gets more tuning than the pixels (in a probe on the small net, C in "
          f"{{0.01, 0.1, 1}} moved no layer's accuracy by more than 0.01; on random features "
          f"as wide as its layers, 0.1 was the best of the three or within 0.003 of it). "
          f"Receptive "
          f"fields follow from the kernel sizes and strides: {fields} (the dense layer sees the "
          f"whole image). Widths (the dimensions a probe sees): pixels "
          f"{data['pixel_width']:,}, {widths}.\n\n"
          f"Two controls at every layer. The untrained net is the same net at its initial "
          f"weights (same seed): what the architecture gives before any learning. Random ReLU "
          f"features are ReLU(x W) of the pixels x for a fixed Gaussian matrix W with as many "
          f"columns as the layer has dimensions, drawn anew for each seed: as many nonlinear "
          f"dimensions as the layer, with no convolution, pooling or learning, fitted and "
          f"scored exactly as the layers are. (A linear random projection would be no "
          f"control: it spans at most the pixels' {data['pixel_width']} dimensions, so a linear "
          f"probe on it can do no better than one on the pixels.)\n\n"
          f"Comparisons are paired over the {seeds} seeds (seed i's trained net against its own "
          f"initial weights and against seed i's random features) by a two-sided paired "
          f"t-test: 'beats' where p < 0.05, 'tie' otherwise. The pixel probe has no seed, so "
          f"against it the test is in effect a one-sample t-test of the seeds against its one "
          f"score. Seeds {', '.join(map(str, study.seeds))} change the initial weights, the "
          f"batch order and the random features' matrix.")


def _cell(c: dict, a: str, b: str) -> str:
    """'trained (+0.009, p = 0.001)': the better of a and b by the paired test, or 'tie'."""
    winner = {"a": a, "b": b, "tie": "tie"}[c["verdict"]]
    return f"{winner} ({c['difference']:+.3f}, p = {c['p']:.2g})"


def _tables(data) -> list[Table]:
    names = data["layers"]
    rows = [["pixels", f"{data['pixel_width']:,}", "1x1", f"{data['pixels']:.3f}"]]
    for n in names:
        side = data["receptive_field_px"][n]
        rows.append([f"random ReLU features as wide as {n}", f"{data['width'][n]:,}", "28x28",
                     spread(data["random"][n])])
        for kind in ("untrained", "trained"):
            rows.append([f"{n}, {KIND_WORDS[kind]}", f"{data['width'][n]:,}",
                         f"{side}x{side}", spread(data[kind][n])])
    short = {"trained": "trained", "untrained": "untrained", "random": "random",
             "pixels": "pixels"}
    compared = [[n] + [_cell(data["compared"][n][f"{a} vs {b}"], short[a], short[b])
                       for a, b in PAIRS] for n in names]
    deeper = [[n, data["deeper"][n]["below"]]
              + [_cell(data["deeper"][n][kind], n, data["deeper"][n]["below"])
                 for kind in ("trained", "untrained")] for n in names]
    seeds = len(data["cnn_test_accuracy"])
    return [Table("Linear-probe test accuracy of each representation (mean (min-max) over "
                  "seeds; random features see the whole image through every unit)",
                  ["representation", "dimensions", "receptive field (px)", "test accuracy"],
                  rows),
            Table(f"Paired comparisons at each layer: the better arm by a paired t-test over "
                  f"{seeds} seeds (p < 0.05), else tie; in brackets the mean difference, first "
                  f"arm minus second, and p",
                  ["layer", *[f"{a} vs {b}" for a, b in PAIRS]], compared),
            Table("Each layer against the one below it, trained and untrained (paired t-test "
                  "as above)", ["layer", "below it", "trained net", "untrained net"], deeper),
            Table("The trained CNN's own test accuracy (its own head, after training)",
                  ["seeds", "test accuracy"],
                  [[seeds, spread(data["cnn_test_accuracy"])]])]


def _words(data, layer, a, b) -> str:
    return Compared(**data["compared"][layer][f"{a} vs {b}"]).words(
        f"the {KIND_WORDS.get(a, a)}", f"the {KIND_WORDS.get(b, b)}")


def _layer(name: str) -> str:
    return "the dense layer" if name == "dense" else name


def _finding(data) -> str:
    names = data["layers"]
    scores = {kind: ", ".join(f"{spread(data[kind][n])}" for n in names) for kind in KINDS}
    clauses = [f"at {_layer(n)}, {_words(data, n, 'untrained', 'random')} and "
               f"{_words(data, n, 'trained', 'untrained')}" for n in names]
    return (
        f"Linear probes on the trained CNN score {scores['trained']} test accuracy at "
        f"{', '.join(names)} against {data['pixels']:.3f} on the raw pixels; the same net "
        f"untrained scores {scores['untrained']}, and random ReLU features of the pixels as "
        f"wide as each layer ({', '.join(f'{w:,}' for w in data['width'].values())} "
        f"dimensions) {scores['random']}. " + _first_upper("; ".join(clauses))
        + f". Training moved the first-layer filters by {np.mean(data['filter_change']):.0%} "
          f"of their norm.")


def _share(data, kind, layer, of="trained") -> float:
    """How much of `of`'s gain over the pixels at `layer` `kind` reaches (mean over seeds)."""
    return ((np.mean(data[kind][layer]) - data["pixels"])
            / (np.mean(data[of][layer]) - data["pixels"]))


def _short(c: dict, a: str, b: str) -> str:
    """'A beats B (p = 0.002)' or 'A and B tie (p = 0.4)': a paired t-test's verdict, where the
    sentence around it names the test."""
    if c["verdict"] == "tie":
        return f"{a} and {b} tie (p = {c['p']:.2g})"
    winner, loser = (a, b) if c["verdict"] == "a" else (b, a)
    return f"{winner} beats {loser} (p = {c['p']:.2g})"


def _deeper_words(data, kind) -> str:
    return ", ".join(_short(d[kind], n, d["below"]) for n, d in data["deeper"].items())


def _rises(data, kind) -> bool:
    return all(d[kind]["verdict"] == "a" for d in data["deeper"].values())


def _meaning(data) -> str:
    names = data["layers"]
    block1, last = names[0], names[-2]
    seeds = len(data["cnn_test_accuracy"])
    mean = {kind: {n: np.mean(data[kind][n]) for n in names} for kind in KINDS}
    side = data["receptive_field_px"][last]
    change = np.mean(data["filter_change"])

    def versus(n, a, b):
        return _short(data["compared"][n][f"{a} vs {b}"], f"the {KIND_WORDS[a]}",
                      f"the {KIND_WORDS[b]}")

    controls = "; ".join(
        f"as wide as {_layer(n)} ({data['width'][n]:,}), {mean['random'][n]:.3f} against the "
        f"untrained net's {mean['untrained'][n]:.3f}: {versus(n, 'untrained', 'random')}"
        for n in names)
    return (
        f"Every comparison here is a paired t-test over the {seeds} seeds. "
        + ("Layer by layer the trained net's features become more linearly separable"
           if _rises(data, "trained") else
           "The trained net's features do not become more linearly separable at every layer")
        + f" (pixels {data['pixels']:.3f}, "
        + ", ".join(f"{n} {mean['trained'][n]:.3f}" for n in names)
        + f": {_deeper_words(data, 'trained')})"
        + (", which is what the claim's 'hierarchy' amounts to here" if _rises(data, "trained")
           else "")
        + ". The untrained net "
        + ("rises too" if _rises(data, "untrained") else "does not rise at every layer")
        + " (" + ", ".join(f"{n} {mean['untrained'][n]:.3f}" for n in names)
        + f": {_deeper_words(data, 'untrained')}).\n\n"
          f"Is an untrained block's lead over the pixels the architecture's doing, or only "
          f"that the block has more dimensions? Random ReLU features of the pixels as wide as "
          f"each layer answer it. They score: {controls}. Of the untrained net's gain over "
          f"the pixels, random features as wide reach "
          f"{_share(data, 'random', block1, 'untrained'):.0%} at {block1} and "
          f"{_share(data, 'random', last, 'untrained'):.0%} at {last}.\n\n"
        + (f"The claim's reading that training taught the early layers to detect edges is not "
           f"what this net shows: its first-layer filters moved by {change:.0%} of their norm "
           f"and look much as they started, since random 3x3 filters with a positive and a "
           f"negative side already respond to edges" if change < 0.5 else
           f"Training reshaped the first-layer filters ({change:.0%} of their norm)")
        + f". At {block1}, {mean['trained'][block1]:.3f} trained against "
          f"{mean['untrained'][block1]:.3f} untrained: "
          f"{versus(block1, 'trained', 'untrained')}. At {last} the untrained net already "
          f"reaches {_share(data, 'untrained', last):.0%} of the trained net's gain over the "
          f"pixels, and {versus(last, 'trained', 'untrained')}. At the dense layer, the one "
          f"that combines the parts, training adds "
          f"{mean['trained']['dense'] - mean['untrained']['dense']:+.3f}: "
          f"{versus('dense', 'trained', 'untrained')}. 'Deeper layers respond to shapes and "
          f"parts' holds as far as this net is deep: its last conv block sees {side}x{side} px "
          f"of a 28x28 digit, a stroke or a junction, and its maps are sparse and local; only "
          f"the dense layer sees whole shapes.")


def _literature(data) -> list[Cited]:
    names = data["layers"]
    blocks, last = names[:-1], names[-2]
    mean = {kind: {n: np.mean(data[kind][n]) for n in names} for kind in KINDS}
    not_rising = [f"{n} against {d['below']}" for n, d in data["deeper"].items()
                  if d["trained"]["verdict"] != "a"]
    beaten = {n: data["compared"][n]["untrained vs random"]["verdict"] == "a" for n in blocks}
    if all(beaten.values()):
        saxe = "agrees: every random-weight conv block beats as many random dimensions"
    elif any(beaten.values()):
        saxe = (f"agrees at {', '.join(n for n in blocks if beaten[n])}, where the "
                f"random-weight conv block beats as many random dimensions; not at "
                f"{', '.join(n for n in blocks if not beaten[n])}")
    else:
        saxe = "disagrees: no random-weight conv block beats as many random dimensions"
    jarrett = _share(data, "untrained", last)
    return [
        Cited("Alain & Bengio 2016",
              "linear probes on every layer of trained Inception v3 and ResNet-50 (ImageNet): "
              "the linear separability of the features increases monotonically with depth",
              f"trained: pixels {data['pixels']:.3f}, "
              + ", ".join(f"{n} {mean['trained'][n]:.3f}" for n in names)
              + f"; {_deeper_words(data, 'trained')} (paired t-tests)",
              ("agrees" if not not_rising else "disagrees: no rise at " + ", ".join(not_rising))
              + ", in a 2-block MNIST CNN rather than ImageNet nets of ~50 layers"),
        Cited("Jarrett et al. 2009",
              "a two-stage convolutional system with random filters reaches almost 63% on "
              "Caltech-101, given rectification, local contrast normalisation and pooling; "
              "with unsupervised pre-training and supervised refinement, over 65%",
              f"{last} untrained {mean['untrained'][last]:.3f}, trained "
              f"{mean['trained'][last]:.3f}, pixels {data['pixels']:.3f}: the random filters "
              f"reach {jarrett:.0%} of the trained block's gain over the pixels",
              "not comparable: 101 classes of natural images, other classifiers and "
              "normalisation; "
              + ("in the same direction, random convolutional filters giving most of what "
                 "trained ones give" if jarrett > 0.5 else
                 "and here random filters give less than half of what trained ones give")),
        Cited("Saxe et al. 2011",
              "convolutional pooling architectures are frequency selective and translation "
              "invariant even with random weights; they cite Jarrett et al.'s one-layer random "
              "filters at 53% on Caltech-101 against 54.2% after pre-training and fine-tuning, "
              "and attribute a surprising fraction of state-of-the-art accuracy to the "
              "architecture alone",
              "untrained conv blocks against random ReLU features as wide, with no convolution "
              "or pooling: " + "; ".join(
                  f"{n} {mean['untrained'][n]:.3f} against {mean['random'][n]:.3f}, "
                  + _short(data["compared"][n]["untrained vs random"], "block", "features")
                  for n in blocks),
              saxe + "; on MNIST digits, not natural images"),
    ]


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]
