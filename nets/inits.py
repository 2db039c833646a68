"""Weight initialisations by name: variance scaling, each drawn from a truncated normal.

They differ only in the variance of a layer's weights: LeCun 1/fan_in keeps the variance of a
linear or tanh layer's output equal to its input's, Glorot 2/(fan_in + fan_out) balances the
forward and backward passes, and He 2/fan_in makes up for ReLU zeroing half its inputs.
Biases start at zero.
"""
from flax import nnx

INITS = {
    "lecun": nnx.initializers.lecun_normal(),
    "glorot": nnx.initializers.glorot_normal(),
    "he": nnx.initializers.he_normal(),
}


def kernel_init(name: str):
    """Returns the initialiser called `name`; an unknown name lists the known ones."""
    try:
        return INITS[name]
    except KeyError:
        raise ValueError(f"unknown init {name!r}; known: {', '.join(INITS)}") from None
