"""Name maps between descent's nets and two outside formats: Hugging Face GPT-2 and
torchvision's ResNets, on plain numpy arrays (reading and writing files is the caller's).

Each map is a table of rows (outside name, where the array goes in descent's pure dicts, its
outside shape, how its axes move); importing and exporting both walk the same table, so the
two directions cannot disagree. The pure dicts are what `nnx.to_pure_dict(nnx.state(model,
nnx.Param))` gives: nested dicts with integer keys for list items.

    fields = gpt2_fields(json.load(open("config.json")))
    model = nets.build("gpt", input_shape=(fields["context"],), **fields)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, gpt2_params(load_file("model.safetensors"), fields))
    nnx.update(model, state)
"""
import re
from collections.abc import Mapping

import numpy as np

import nets
from nets.resnet import DEPTHS, EXPANSION

# Hugging Face's GPT2Config defaults: old config.json files (the hub's gpt2 among them) leave
# out keys added since, which then take these values.
GPT2_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "model_type": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    "n_inner": None, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
    "resid_pdrop": 0.1,
}
# All three are GELU's tanh approximation, the one jax.nn.gelu computes by default (gelu_fast
# only rounds sqrt(2 / pi) to 10 digits). Plain "gelu" is the exact erf form: other numbers.
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# The causal mask that older versions of transformers saved with the weights: not a parameter.
GPT2_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")


def gpt2_fields(hf_config: Mapping) -> dict:
    """descent's GPT fields (and num_classes, the vocabulary) from a Hugging Face GPT-2
    config.json dict; ValueError for a model that descent's GPT does not compute the same way.
    `reorder_and_upcast_attn` is accepted: it changes only how float16 attention is rounded."""
    c = {**GPT2_DEFAULTS, **hf_config}

    def refuse(key, supported):
        raise ValueError(f"config.json has {key}={c[key]!r}; descent's GPT supports {supported}")

    if c["model_type"] != "gpt2":
        refuse("model_type", "'gpt2' only")
    if c["activation_function"] not in GPT2_ACTIVATIONS:
        refuse("activation_function", f"GELU's tanh approximation: {', '.join(GPT2_ACTIVATIONS)}")
    if c["layer_norm_epsilon"] != 1e-5:
        refuse("layer_norm_epsilon", "1e-05 only")
    if c["n_inner"] is not None and c["n_inner"] != 4 * c["n_embd"]:
        refuse("n_inner", f"None or 4 * n_embd = {4 * c['n_embd']}")
    if not c["scale_attn_weights"]:
        refuse("scale_attn_weights", "true only (scores over sqrt(head size))")
    if c["scale_attn_by_inverse_layer_idx"]:
        refuse("scale_attn_by_inverse_layer_idx", "false only")
    if c["add_cross_attention"]:
        refuse("add_cross_attention", "false only (a decoder without cross-attention)")
    if not c["tie_word_embeddings"]:
        refuse("tie_word_embeddings", "true only (the output layer is the token embedding)")
    return {"layers": c["n_layer"], "heads": c["n_head"], "width": c["n_embd"],
            "context": c["n_positions"], "dropout": c["resid_pdrop"],
            "num_classes": c["vocab_size"]}


def gpt2_config(fields: Mapping, vocab_size: int | None = None) -> dict:
    """A config.json dict for `transformers.GPT2LMHeadModel` from descent's GPT fields;
    `vocab_size` defaults to fields["num_classes"]."""
    f = {**nets.fields("gpt"), **fields}
    vocab = vocab_size if vocab_size is not None else f["num_classes"]
    if not f["context"]:
        raise ValueError("model.context=0 (follow the input) has no GPT-2 n_positions; set "
                         "model.context to the number of learned positions")
    # GPT-2's tokenizer has 50257 ids, its <|endoftext|> (begins and ends texts) the last one;
    # another vocabulary's is not known here.
    end = 50256 if vocab == 50257 else None
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab,
            "n_layer": f["layers"], "n_head": f["heads"], "n_embd": f["width"],
            "n_positions": f["context"], "n_ctx": f["context"], "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": f["dropout"], "embd_pdrop": f["dropout"],
            "attn_pdrop": 0.0,  # descent drops no attention probabilities
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
            "bos_token_id": end, "eos_token_id": end}


def _gpt2_rows(layers, width, vocab, context) -> list[tuple]:
    """(name, target, path, shape, layout) rows of GPT-2's tensors. HF's Conv1D weights are
    (in, out) like flax kernels, and c_attn's output splits into q, k, v, then heads, as the
    (3, heads, head size) reshape of descent's qkv does: every array goes across as it is."""
    def norm(name, path):
        return [(f"{name}.weight", "params", (*path, "scale"), (width,), None),
                (f"{name}.bias", "params", (*path, "bias"), (width,), None)]

    def linear(name, path, d_in, d_out):
        return [(f"{name}.weight", "params", (*path, "kernel"), (d_in, d_out), None),
                (f"{name}.bias", "params", (*path, "bias"), (d_out,), None)]

    rows = [("wte.weight", "params", ("embed", "embedding"), (vocab, width), None),
            ("wpe.weight", "params", ("positions",), (context, width), None)]
    for i in range(layers):
        h, b = f"h.{i}", ("blocks", i)
        rows += [*norm(f"{h}.ln_1", (*b, "norm1")),
                 *linear(f"{h}.attn.c_attn", (*b, "attention", "qkv"), width, 3 * width),
                 *linear(f"{h}.attn.c_proj", (*b, "attention", "out"), width, width),
                 *norm(f"{h}.ln_2", (*b, "norm2")),
                 *linear(f"{h}.mlp.c_fc", (*b, "up"), width, 4 * width),
                 *linear(f"{h}.mlp.c_proj", (*b, "down"), 4 * width, width)]
    return rows + norm("ln_f", ("norm",))


def gpt2_params(tensors: Mapping[str, np.ndarray], fields: Mapping) -> dict:
    """descent's GPT parameters (a pure dict) from Hugging Face GPT-2 tensors, named with or
    without GPT2LMHeadModel's "transformer." prefix; `fields` as `gpt2_fields` gives them."""
    named, head = {}, None  # short name -> (name as given, array)
    for name, x in tensors.items():
        short = name.removeprefix("transformer.")
        if short in named:
            raise ValueError(f"{short} is in the tensors twice, with and without 'transformer.'")
        if short == "lm_head.weight":
            head = name  # checked against wte below
        elif not GPT2_BUFFER.fullmatch(short):
            named[short] = (name, x)
    _, wte = named.get("wte.weight", (None, np.zeros((0, 0))))
    vocab = fields.get("num_classes", len(wte))  # or else wte's rows
    rows = _gpt2_rows(fields["layers"], fields["width"], vocab, fields["context"])
    params = _read(named, rows, "GPT")["params"]
    # descent's GPT computes its logits with the token embedding (tied weights), so an output
    # layer of its own would be dropped silently: refuse one that differs.
    if head is not None and not np.array_equal(np.asarray(tensors[head], np.float32),
                                               params["embed"]["embedding"]):
        raise ValueError(f"{head} differs from wte.weight; descent's GPT ties its output layer "
                         f"to the token embedding")
    return params


def gpt2_tensors(params: Mapping) -> dict[str, np.ndarray]:
    """GPT-2 tensors, with the names `GPT2LMHeadModel.from_pretrained` reads, from descent's
    GPT parameters; lm_head.weight is left out, as save_pretrained does (tied to wte)."""
    vocab, width = np.shape(params["embed"]["embedding"])
    rows = _gpt2_rows(len(params["blocks"]), width, vocab, np.shape(params["positions"])[0])
    return {f"transformer.{name}": x for name, x in _write({"params": params}, rows).items()}


def _resnet_rows(depth, num_classes, width=64, in_channels=3) -> list[tuple]:
    """(name, target, path, shape, layout) rows of torchvision's ResNet-`depth`: its
    layerS.I blocks are descent's blocks[k], k counting across the stages."""
    def conv(name, path, c_out, c_in, k):
        return [(f"{name}.weight", "params", (*path, "kernel"), (c_out, c_in, k, k), "conv")]

    def norm(name, path, c):
        return [(f"{name}.weight", "params", (*path, "scale"), (c,), None),
                (f"{name}.bias", "params", (*path, "bias"), (c,), None),
                (f"{name}.running_mean", "stats", (*path, "mean"), (c,), None),
                (f"{name}.running_var", "stats", (*path, "var"), (c,), None),
                (f"{name}.num_batches_tracked", "stats", None, (), "count")]

    counts, bottleneck = DEPTHS[depth]
    rows = [*conv("conv1", ("stem_conv",), width, in_channels, 7),
            *norm("bn1", ("stem_norm",), width)]
    c_in, k = width, 0
    for stage, count in enumerate(counts):
        c = width * 2 ** stage
        shapes = [(c, 1), (c, 3), (c * EXPANSION, 1)] if bottleneck else [(c, 3), (c, 3)]
        for i in range(count):
            name, path = f"layer{stage + 1}.{i}", ("blocks", k)
            inner = c_in
            for j, (c_out, kernel) in enumerate(shapes):
                rows += [*conv(f"{name}.conv{j + 1}", (*path, "convs", j), c_out, inner, kernel),
                         *norm(f"{name}.bn{j + 1}", (*path, "norms", j), c_out)]
                inner = c_out
            if (stage > 0 and i == 0) or c_in != inner:  # Block's rule for a projection
                rows += [*conv(f"{name}.downsample.0", (*path, "shortcut_conv"), inner, c_in, 1),
                         *norm(f"{name}.downsample.1", (*path, "shortcut_norm"), inner)]
            c_in, k = inner, k + 1
    return rows + [("fc.weight", "params", ("head", "kernel"), (num_classes, c_in), "linear"),
                   ("fc.bias", "params", ("head", "bias"), (num_classes,), None)]


def resnet_classes(tensors: Mapping[str, np.ndarray]) -> int:
    """The number of classes of a torchvision ResNet state dict: fc.weight's rows."""
    if "fc.weight" not in tensors:
        raise ValueError("missing tensor fc.weight, whose rows are the number of classes")
    return np.shape(tensors["fc.weight"])[0]


def resnet_depth(tensors: Mapping[str, np.ndarray]) -> int:
    """The depth (18, 34, 50, 101, 152) of a torchvision ResNet state dict, from its blocks."""
    blocks = {tuple(map(int, m.groups())) for m in
              (re.match(r"layer(\d)\.(\d+)\.", name) for name in tensors) if m}
    counts = tuple(sum(1 for s, _ in blocks if s == stage) for stage in (1, 2, 3, 4))
    bottleneck = "layer1.0.conv3.weight" in tensors
    for depth, row in DEPTHS.items():
        if row == (counts, bottleneck):
            return depth
    raise ValueError(f"no ResNet depth has {counts} blocks per stage with "
                     f"{'bottleneck' if bottleneck else 'basic'} blocks; descent's: "
                     f"{', '.join(f'{d}: {r[0]}' for d, r in DEPTHS.items())}")


def resnet_params(tensors: Mapping[str, np.ndarray], depth: int) -> tuple[dict, dict]:
    """(parameters, batch-norm statistics) of descent's ResNet-`depth` (stem="imagenet",
    width 64, as torchvision's) from a torchvision ResNet state dict of numpy arrays."""
    if depth not in DEPTHS:
        raise ValueError(f"unknown ResNet depth {depth}; known: {', '.join(map(str, DEPTHS))}")
    rows = _resnet_rows(depth, resnet_classes(tensors))
    pures = _read({name: (name, x) for name, x in tensors.items()}, rows, f"ResNet-{depth}")
    return pures["params"], pures["stats"]


def resnet_tensors(params: Mapping, batch_stats: Mapping) -> dict[str, np.ndarray]:
    """A torchvision ResNet state dict (numpy arrays) from descent's ResNet parameters and
    batch-norm statistics; `torchvision.models.resnetN().load_state_dict` takes it strictly."""
    blocks = params["blocks"]
    bottleneck = len(_child(blocks, 0)["convs"]) == 3
    depth = next((d for d, (counts, b) in DEPTHS.items()
                  if sum(counts) == len(blocks) and b == bottleneck), None)
    if depth is None:
        raise ValueError(f"{len(blocks)} blocks make no ResNet depth of descent's "
                         f"({', '.join(map(str, DEPTHS))})")
    rows = _resnet_rows(depth, np.shape(params["head"]["kernel"])[1])
    return _write({"params": params, "stats": batch_stats}, rows)


def _child(node: Mapping, key):
    """node[key]; a list item's key may also be its index as a string (a pure dict that went
    through a checkpoint's JSON or msgpack)."""
    return node[key] if key in node or not isinstance(key, int) else node[str(key)]


# How an array's axes move from the outside layout to descent's, and back.
TO_DESCENT = {"conv": (2, 3, 1, 0),  # PyTorch (out, in, kh, kw) -> flax (kh, kw, in, out)
              "linear": (1, 0)}      # PyTorch Linear (out, in) -> flax kernel (in, out)
TO_OUTSIDE = {"conv": (3, 2, 0, 1), "linear": (1, 0)}


def _read(named: Mapping[str, tuple[str, np.ndarray]], rows, model: str) -> dict:
    """{target: pure dict} from `named` (short name -> (name as given, array)): every row's
    tensor present with its shape, and no tensor left over."""
    pures = {"params": {}, "stats": {}}
    for name, target, path, shape, layout in rows:
        if layout == "count":
            continue  # batch norm's step count (absent from old files): descent's running
            # averages use a fixed momentum, so it has no use for it
        if name not in named:
            raise ValueError(f"missing tensor {name} (expected shape {shape})")
        given, x = named[name]
        if np.shape(x) != shape:
            raise ValueError(f"tensor {given} has shape {tuple(np.shape(x))}; descent's {model} "
                             f"expects {shape}")
        # a copy, not a view of the caller's (or a torch tensor's) memory; descent keeps its
        # parameters in float32
        x = np.array(x, np.float32)
        *parents, leaf = path
        node = pures[target]
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = np.ascontiguousarray(x.transpose(TO_DESCENT[layout]) if layout else x)
    unexpected = sorted(set(named) - {row[0] for row in rows})
    if unexpected:
        raise ValueError(f"unexpected tensors, which descent's {model} has no place for: "
                         f"{', '.join(named[n][0] for n in unexpected)}")
    return pures


def _write(pures: Mapping[str, Mapping], rows) -> dict[str, np.ndarray]:
    """The rows' tensors, named as outside, from {target: pure dict}."""
    tensors = {}
    for name, target, path, _, layout in rows:
        if layout == "count":
            # PyTorch's count of batch-norm steps, read only with momentum=None; descent keeps none
            tensors[name] = np.zeros((), np.int64)
            continue
        x = pures[target]
        for key in path:
            x = _child(x, key)
        x = np.array(x, np.float32)  # a writable copy: torch.from_numpy warns on read-only
        tensors[name] = np.ascontiguousarray(x.transpose(TO_OUTSIDE[layout]) if layout else x)
    return tensors
