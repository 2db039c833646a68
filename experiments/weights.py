"""Weights in and out: `descent import` turns a Hugging Face GPT-2 directory or a torchvision
ResNet state dict into a work directory, and `descent export` writes a run's parameters back
in that format, as safetensors (`nets.convert` holds the name maps).

An imported work directory holds one checkpoint, at step 0, of the parameters (and a ResNet's
batch-norm statistics) with the config of the net that computes them; it is a starting point
for `--config.init_from` and for `descent export`, not a trained run: it has no data to
evaluate or predict with, and commands that need that say so. Nothing is unpickled: a `.pth`
file is read by PyTorch's own `torch.load(weights_only=True)` where PyTorch is installed.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

import data
import nets
from data import tokens
from data.arrays import Normalization
from experiments.configs.common import base_config
from experiments.config import model_fields
from nets import convert
from train import checkpoint, workdir_lock
from train.files import write_atomically
from train.optimizers import make_optimizer
from train.resume import prepare_workdir
from train.state import create_state
from train.storage import URL

SOURCES = ("hf-gpt2", "torchvision-resnet")
IMPORTED = "imported"  # the dataset name an imported work directory's description records
RESNETS = tuple(f"resnet{depth}" for depth in convert.DEPTHS)


def import_weights(source: str, path: str, workdir: str, arch: str | None = None) -> str:
    """Writes the weights at `path` (`source`: hf-gpt2, a model's directory; torchvision-resnet,
    a state dict file) into a new work directory `workdir` as its checkpoint at step 0;
    returns a line saying what it holds. Every check runs before the work directory is made."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    if arch is not None and source != "torchvision-resnet":
        raise ValueError("--arch applies to torchvision-resnet; hf-gpt2 reads its config.json")
    if checkpoint.has_checkpoints(workdir):
        raise ValueError(f"{workdir} already holds checkpoints; import into a new --workdir")
    if source == "hf-gpt2":
        name, fields, params, stats, about = _hf_gpt2(path)
    else:
        name, fields, params, stats, about = _torchvision_resnet(path, arch)
    num_classes = fields.pop("num_classes")
    input_shape = (fields["context"],) if name == "gpt" else (224, 224, 3)
    model = nets.build(name, input_shape=input_shape, num_classes=num_classes, **fields)
    _fill(model, nnx.Param, params)
    if stats:
        _fill(model, nnx.BatchStat, stats)
    config = base_config()
    config.model = model_fields(name, {"name": name, **fields})
    state = create_state(model, make_optimizer(config.optimizer, 1), config.seed)[1]
    state = state.replace(opt_state=())  # a fine-tune makes its own
    description = {"name": IMPORTED, "source": about, "input_shape": list(input_shape),
                   "outputs": num_classes}
    if source == "hf-gpt2":
        description.update(_gpt2_tokenizer(path, num_classes, fields["context"]))
    prepare_workdir(workdir)
    with workdir_lock.hold(workdir, exclusive=True), checkpoint.Checkpoints(
            workdir, keep=1, keep_best=0) as saved:
        saved.save(0, state, config.to_dict(), {"epoch": 0, "batch": 0, "seed": config.seed,
                                                "batch_size": config.dataset.batch_size},
                   dataset=description)
    count = sum(np.size(x) for x in jax.tree.leaves(params))
    return (f"imported {about} as model.name={name} ({count:,} parameters, {num_classes} "
            f"outputs) into {os.path.abspath(workdir)}; fine-tune from it with "
            f"--config.init_from={workdir}")


def export(workdir: str, out: str, which: str = "best") -> list[str]:
    """Writes the parameters of checkpoint `which` of `workdir` into the folder `out`: a GPT as
    a Hugging Face GPT-2 (config.json, model.safetensors), a ResNet as a torchvision state dict
    (model.safetensors). Returns the files written; never overwrites one."""
    if URL.match(out):
        raise ValueError(f"--out {out!r} is a URL; descent writes an export to a folder on this "
                         f"machine: name one and copy it to the bucket")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file; export into a new or empty folder")
    if not checkpoint.has_checkpoints(workdir):
        raise ValueError(f"no checkpoints in {workdir}; name a work directory descent trained "
                         f"or imported into")
    with workdir_lock.hold(workdir, exclusive=False):
        manager = checkpoint.open_manager(workdir, read_only=True)
        step = checkpoint.resolve_step(manager, which)
        model = checkpoint.saved_config(manager, step)["model"]
        if model["name"] != "gpt" and model["name"] not in RESNETS:
            raise ValueError(f"export writes a gpt run as a Hugging Face GPT-2 and a resnet run "
                             f"as torchvision's; this run's model is {model['name']}")
        arrays = checkpoint.read_arrays(manager, step)
    params = _nested(arrays, "params/")
    if model.get("scan_layers"):  # stacked blocks: layer i is index i of every array
        stacked = params["blocks"]
        layers = jax.tree.leaves(stacked)[0].shape[0]
        params["blocks"] = {i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(layers)}
    if model["name"] == "gpt":
        vocab = params["embed"]["embedding"].shape[0]
        fields = {**model, "context": params["positions"].shape[0]}  # also where it was 0
        files = {"model.safetensors": safetensors.numpy.save(convert.gpt2_tensors(params)),
                 "config.json": json.dumps(convert.gpt2_config(fields, vocab), indent=2) + "\n"}
    else:
        tensors = convert.resnet_tensors(params, _nested(arrays, "model_state/"))
        files = {"model.safetensors": safetensors.numpy.save(tensors)}
    written = [os.path.join(out, name) for name in files]
    taken = [path for path in written if os.path.lexists(path)]
    if taken:
        raise ValueError(f"{taken[0]} exists; export into a new or empty --out folder")
    os.makedirs(out, exist_ok=True)
    for path, content in zip(written, files.values()):
        write_atomically(path, content)
    return written


def _hf_gpt2(directory: str):
    """(net, fields with num_classes, params, stats, about) of a Hugging Face GPT-2 folder."""
    if not os.path.isdir(directory):
        raise ValueError(f"{directory} is not a directory; hf-gpt2 reads a model's folder "
                         f"(config.json and model.safetensors)")
    config_file = os.path.join(directory, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{directory} has no config.json; a Hugging Face GPT-2 folder holds "
                         f"config.json and model.safetensors (save_pretrained writes both)")
    try:
        with open(config_file, encoding="utf-8") as f:
            hf = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file} is not JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{config_file} holds a {type(hf).__name__}, not a GPT-2 config")
    weights = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(weights):
        raise ValueError(f"{directory} has no model.safetensors; descent reads safetensors, not "
                         f"pickles: save the model with save_pretrained(folder) (safetensors "
                         f"is its default)")
    try:
        fields = convert.gpt2_fields(hf)
    except KeyError as e:
        raise ValueError(f"{config_file} has no {e}; is it a GPT-2's?") from None
    params = convert.gpt2_params(_safetensors(weights), fields)
    return "gpt", fields, params, {}, f"Hugging Face GPT-2 {os.path.abspath(directory)}"


def _gpt2_tokenizer(directory: str, vocab_size: int, context: int) -> dict:
    """What the description of an imported GPT-2 says of its text: its tokenizer, where the
    folder holds GPT-2's vocab.json and merges.txt (as the hub's gpt2 does), so `sample`
    encodes and decodes text; otherwise nothing."""
    if not all(os.path.isfile(os.path.join(directory, f)) for f in ("vocab.json", "merges.txt")):
        return {}
    made = tokens.gpt2_tokenizer(directory)
    if made.get_vocab_size() > vocab_size:
        raise ValueError(f"{directory}'s tokenizer has {made.get_vocab_size():,} tokens, more "
                         f"than the model's {vocab_size:,} outputs: they do not belong together")
    return {"task": "classification", "input_shape": [context], "classes": [],
            "outputs": vocab_size, "stored": "int32", "normalization": Normalization().record(),
            "text": "tokens", "tokenizer": made.to_str(), "train_windows": 0, "examples": {}}


def load_imported(workdir: str, which: str = "latest") -> tuple[nnx.Module, object]:
    """The net of an imported work directory with its weights, and its description as a
    dataset (`data.described`: for a GPT-2 imported with its tokenizer, text it samples)."""
    with workdir_lock.hold(workdir, exclusive=False):
        manager = checkpoint.open_manager(workdir, read_only=True)
        step = checkpoint.resolve_step(manager, which)
        model = dict(checkpoint.saved_config(manager, step)["model"])
        described = checkpoint.saved_dataset(manager, step)
        arrays = checkpoint.read_arrays(manager, step)
    name = model.pop("name")
    params = _nested(arrays, "params/")
    net = nets.build(name, input_shape=tuple(described["input_shape"]),
                     num_classes=described["outputs"], **model)
    _fill(net, nnx.Param, params)
    stats = _nested(arrays, "model_state/")
    if stats:
        _fill(net, nnx.BatchStat, stats)
    return net, data.described(described)


def imported(workdir: str) -> dict | None:
    """The description of an imported work directory's newest checkpoint; None for a run."""
    if not checkpoint.has_checkpoints(workdir):
        return None
    with workdir_lock.hold(workdir, exclusive=False):
        manager = checkpoint.open_manager(workdir, read_only=True)
        described = checkpoint.saved_dataset(manager, checkpoint.resolve_step(manager))
    return described if described and described.get("name") == IMPORTED else None


def _torchvision_resnet(path: str, arch: str | None):
    """(net, fields with num_classes, params, stats, about) of a torchvision ResNet file."""
    if arch is not None and arch not in RESNETS:
        raise ValueError(f"--arch {arch!r} is not one of {', '.join(RESNETS)}")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a file; torchvision-resnet reads a state dict "
                         f"(.safetensors, or .pth with PyTorch installed)")
    tensors = _safetensors(path) if path.endswith(".safetensors") else _pth(path)
    depth = convert.resnet_depth(tensors)
    if arch is not None and arch != f"resnet{depth}":
        raise ValueError(f"{path} holds a ResNet-{depth}'s blocks, not those of {arch}; leave "
                         f"--arch out or name resnet{depth}")
    params, stats = convert.resnet_params(tensors, depth)
    fields = {"num_classes": convert.resnet_classes(tensors)}
    return f"resnet{depth}", fields, params, stats, f"torchvision ResNet-{depth} " \
        f"{os.path.abspath(path)}"


def _safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(path)
    except Exception as e:  # noqa: BLE001 - the library's errors name no file
        raise ValueError(f"{path} cannot be read as safetensors ({_first_line(e)})") from None


def _pth(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict read by PyTorch itself, allowing tensors only (no code runs)."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path} is a PyTorch pickle, which descent reads only through "
                         f"PyTorch: install torch, or convert it once with "
                         f"safetensors.torch.save_file(torch.load(path), 'resnet.safetensors')"
                         ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's errors for a file that is not one
        # torch's own message advises loading the file with its code run: never repeated here
        if "This file can still be loaded" in str(e):
            raise ValueError(f"{path} is not a state dict of tensors alone (PyTorch's restricted "
                             f"loader refused it): save model.state_dict() with torch.save, "
                             f"or as .safetensors") from None
        why = ("not a file torch.save wrote" if "Weights only load failed" in str(e)
               else _first_line(e))
        raise ValueError(f"{path} cannot be read as a PyTorch state dict ({why})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors; save model.state_dict()")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _fill(model: nnx.Module, kind, pure: dict) -> None:
    """Sets `model`'s variables of `kind` to the pure dict's arrays, in their dtypes."""
    state = nnx.state(model, kind)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    nnx.update(model, state)


def _nested(arrays: dict, prefix: str) -> dict:
    """{'params/blocks/0/kernel': x} -> {'blocks': {0: {'kernel': x}}} for the names under
    `prefix`: the pure dicts of `nets.convert`, list items under integer keys."""
    nested = {}
    for name, x in arrays.items():
        if not name.startswith(prefix):
            continue
        *path, leaf = (int(k) if k.isdigit() else k for k in name[len(prefix):].split("/"))
        node = nested
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = x
    return nested


def _first_line(error: Exception) -> str:
    """A library's message, cut to its first line: ours is one line."""
    return (str(error).splitlines() or [type(error).__name__])[0][:200]
