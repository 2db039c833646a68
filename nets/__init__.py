"""Model definitions as flax.nnx modules, picked by name.

Every net is called as `net(x, train=bool, rngs=key_or_None) -> logits`; `rngs` feeds dropout.
"""
import inspect

from flax import nnx

from nets.activations import ACTIVATIONS, activation
from nets.cnn import CNN
from nets.mlp import MLP

NETS = {"mlp": MLP, "cnn": CNN}


def build(name: str, *, input_shape, num_classes: int, seed: int = 0, **fields) -> nnx.Module:
    """Builds the net called `name` with its own `fields` (e.g. depth, width, activation).

    Unknown names and unknown fields raise ValueError listing what is accepted.
    """
    if name not in NETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(NETS))}")
    net = NETS[name]
    accepted = [p for p in list(inspect.signature(net.__init__).parameters)[1:]
                if p not in ("input_shape", "num_classes", "rngs")]
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {', '.join(unknown)}; its fields: {', '.join(accepted)}"
        )
    return net(input_shape=tuple(input_shape), num_classes=num_classes,
               rngs=nnx.Rngs(params=seed), **fields)


__all__ = ["ACTIVATIONS", "CNN", "MLP", "NETS", "activation", "build"]
