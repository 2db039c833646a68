"""Model definitions as flax.nnx modules, picked by name.

Every net is called as `net(x, train=bool, rngs=key_or_None) -> logits`; `rngs` feeds dropout.
Logits are float32 whatever the compute dtype (`dtype` field: float32 or bfloat16); parameters
are always float32. Variants (ResNet depths, recurrent cells) are rows of `NETS`: a constructor
with some fields fixed by `functools.partial`.
"""
import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import nnx

from nets.activations import ACTIVATIONS, activation
from nets.cnn import CNN
from nets.dtypes import DTYPES
from nets.mlp import MLP
from nets.recurrent import CELLS, Recurrent
from nets.resnet import DEPTHS, ResNet
from nets.speednet import SpeedNet
from nets.transformer import GPT, Encoder


class Net(NamedTuple):
    make: Callable[..., nnx.Module]
    input_shape: tuple[int, ...]  # a typical input, for `descent models` and benchmarks
    num_classes: int
    about: str


NETS = {
    "mlp": Net(MLP, (8, 8, 1), 10, "feedforward: dense layers with an activation between"),
    "cnn": Net(CNN, (28, 28, 1), 10, "conv -> activation -> 2x2 max-pool blocks, dense head"),
    **{f"resnet{d}": Net(functools.partial(ResNet, depth=d), (224, 224, 3), 1000,
                         f"ResNet-{d} v1.5, {'bottleneck' if DEPTHS[d][1] else 'basic'} blocks")
       for d in DEPTHS},
    "gpt": Net(GPT, (1024,), 50257, "decoder-only Transformer language model; GPT-2 small"),
    "bert": Net(Encoder, (28, 28, 1), 10, "BERT-style encoder classifier; image rows as tokens"),
    **{cell: Net(functools.partial(Recurrent, cell=cell), (256,), 65,
                 f"{cell.upper()} character language model (sequence classifier on images)")
       for cell in CELLS},
    "speednet": Net(SpeedNet, (32, 32, 3), 10,
                    "airbench94-style CIFAR net: conv-pool-BN-GELU blocks, flip TTA in evaluation"),
}


def fields(name: str) -> dict:
    """The fields net `name` takes (beyond input_shape, num_classes, rngs), with the defaults
    of its constructor: what the `model` group of a config holds besides `name`.
    An unknown name raises ValueError listing the known ones."""
    if name not in NETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(NETS))}")
    make, fixed = NETS[name].make, {}
    if isinstance(make, functools.partial):
        make, fixed = make.func, make.keywords
    parameters = list(inspect.signature(make.__init__).parameters.values())[1:]  # after self
    return {p.name: p.default for p in parameters
            if p.name not in ("input_shape", "num_classes", "rngs", *fixed)}


def build(name: str, *, input_shape, num_classes: int, seed: int = 0, **fields_) -> nnx.Module:
    """Builds the net called `name` with its own `fields_` (e.g. depth, width, activation).

    Unknown names and unknown fields raise ValueError listing what is accepted.
    """
    accepted = list(fields(name))
    unknown = sorted(set(fields_) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} has no field(s) {', '.join(unknown)}; its fields: "
                         f"{', '.join(accepted)}")
    try:
        net = NETS[name].make(input_shape=tuple(input_shape), num_classes=num_classes,
                              rngs=nnx.Rngs(params=seed), **fields_)
    except (ArithmeticError, TypeError, IndexError, KeyError) as e:  # a field the net's own
        # checks let through fails deep in flax (a channel count of 0 divides by zero there)
        _check_sizes(name, fields_, e)
        raise ValueError(f"model {name!r} cannot be built with its fields ({type(e).__name__}: "
                         f"{e}); `descent models` lists each net's defaults") from e
    except ValueError as e:  # the net's own check names its field; another ValueError (math's
        if "model." not in str(e):  # "math domain error" from a negative count) does not
            _check_sizes(name, fields_)
        raise
    _check_sizes(name, fields_)
    return net


def _check_sizes(name: str, fields_: dict, error: Exception | None = None) -> None:
    """Refuses a negative size or count (no net means one), and, where building failed with
    `error`, a size of 0 that the net's own checks let through."""
    def ints(value):
        return [v for v in (value if isinstance(value, tuple) else (value,))
                if isinstance(v, int) and not isinstance(v, bool)]

    defaults = fields(name)
    for field, value in fields_.items():
        if any(v < 0 for v in ints(value)) or (
                error is not None and value != defaults.get(field) and 0 in ints(value)):
            raise ValueError(f"model.{field}={value!r} is not a size {name} can take: its sizes "
                             f"and counts are {'1' if error else '0'} or more") from error


def count_params(name: str, input_shape=None, num_classes=None, **fields_) -> int:
    """Trainable parameters of net `name` (batch-norm statistics excluded), without allocating
    them: shapes only, so a 124M-parameter net counts in a second."""
    net = NETS[name]
    model = nnx.eval_shape(lambda: build(
        name, input_shape=input_shape or net.input_shape,
        num_classes=num_classes or net.num_classes, **fields_))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["ACTIVATIONS", "CNN", "DTYPES", "GPT", "MLP", "NETS", "Encoder", "Net", "Recurrent",
           "ResNet", "activation", "build", "count_params", "fields"]
