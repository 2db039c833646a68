"""Weight initialisations by name: variance scaling, each drawn from a truncated normal.

They differ only in the variance of a layer's weights: LeCun 1/fan_in keeps the variance of a
linear or tanh layer's output equal to its input's, Glorot 2/(fan_in + fan_out) balances the
forward and backward passes, and He 2/fan_in makes up for ReLU zeroing half its inputs.

Biases start at zero (`zeros`, flax's and Keras's default), or drawn uniformly from
[-1/sqrt(fan_in), 1/sqrt(fan_in)] (`uniform`, what PyTorch's nn.Linear and nn.Conv2d do). The
choice matters most where a layer has few inputs: a ReLU unit of a layer reading one input x
bends where w x + b = 0, so with zero biases every unit bends at x = 0.
"""
import math

import jax
from flax import nnx

INITS = {
    "lecun": nnx.initializers.lecun_normal(),
    "glorot": nnx.initializers.glorot_normal(),
    "he": nnx.initializers.he_normal(),
}


BIAS_INITS = ("zeros", "uniform")


def bias_init(name: str, fan_in: int):
    """The bias initialiser called `name` for a layer with `fan_in` inputs per unit; an unknown
    name lists the known ones."""
    if name == "zeros":
        return nnx.initializers.zeros_init()
    if name == "uniform":
        bound = 1.0 / math.sqrt(fan_in)
        return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound)
    raise ValueError(f"unknown bias_init {name!r}; known: {', '.join(BIAS_INITS)}")


def kernel_init(name: str):
    """Returns the initialiser called `name`; an unknown name lists the known ones."""
    try:
        return INITS[name]
    except KeyError:
        raise ValueError(f"unknown init {name!r}; known: {', '.join(INITS)}") from None
