"""Recurrent nets: LSTM, GRU and a plain tanh RNN, scanned over time with `jax.lax.scan`.

Each layer first projects the whole input sequence at once (one large matmul, which is what a
CPU or accelerator does fastest); only the recurrent matmul, hidden state by recurrent
weights, runs step by step inside the scan. Layers stack, with dropout between them. The cells
follow PyTorch's equations and parameter layout (an input and a recurrent bias per gate), so
parameter counts compare one to one.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from nets.dtypes import compute_dtype


# Each cell takes the input's and the hidden state's contributions to its gates (x W + b and
# h U + b, computed in the compute dtype) and the state, and returns the new state, all in
# float32: rounding errors in bfloat16 would accumulate in the state over hundreds of steps.


def lstm_cell(xw_BxG, hu_BxG, h_BxH, c_BxH):
    """Input, forget, cell and output gates; c' = f*c + i*g, h' = o*tanh(c')."""
    i, f, g, o = jnp.split(xw_BxG + hu_BxG, 4, axis=-1)
    c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_BxH), c_BxH


def gru_cell(xw_BxG, hu_BxG, h_BxH, c_BxH):
    """Reset and update gates; the candidate sees the reset-scaled recurrent term."""
    x_r, x_z, x_n = jnp.split(xw_BxG, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hu_BxG, 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h_BxH, c_BxH


def rnn_cell(xw_BxG, hu_BxG, h_BxH, c_BxH):
    """h' = tanh(x W + h U + b): the Elman network."""
    return jnp.tanh(xw_BxG + hu_BxG), c_BxH


CELLS = {"lstm": (lstm_cell, 4), "gru": (gru_cell, 3), "rnn": (rnn_cell, 1)}  # cell, gates


def symmetric_uniform(bound: float):
    """uniform(-bound, bound): PyTorch's initialiser for every recurrent weight and bias."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class RecurrentLayer(nnx.Module):
    def __init__(self, cell, in_features, hidden, dtype, rngs, forget_bias=0.0, chrono=0):
        self.cell = cell
        _, gates = CELLS[cell]
        init = symmetric_uniform(1 / math.sqrt(hidden))
        self.input = nnx.Linear(in_features, gates * hidden, kernel_init=init, bias_init=init,
                                dtype=dtype, rngs=rngs)
        self.recurrent = nnx.Linear(hidden, gates * hidden, kernel_init=init, bias_init=init,
                                    dtype=dtype, rngs=rngs)
        # the LSTM's gates are input, forget, cell, output: the forget gate is the second quarter
        forget, entry = slice(hidden, 2 * hidden), slice(0, hidden)
        if forget_bias:
            bias = self.input.bias[...]
            self.input.bias[...] = bias.at[forget].add(forget_bias)
        if chrono:
            # Tallec & Ollivier 2018: log(u), u ~ U[1, chrono - 1], spreads the forget gates'
            # time constants 1 / (1 - sigmoid(b)) = 1 + u over 2 to chrono steps, and the
            # input gate opens as little as the forget gate holds
            b_H = jnp.log(jax.random.uniform(rngs.params(), (hidden,), minval=1.0,
                                             maxval=chrono - 1.0))
            self.input.bias[...] = self.input.bias[...].at[forget].set(b_H).at[entry].set(-b_H)
            self.recurrent.bias[...] = self.recurrent.bias[...].at[forget].set(0).at[entry].set(0)

    def __call__(self, x_BxLxD) -> jax.Array:
        """The hidden state at every position: (B, L, D) -> (B, L, H)."""
        cell, _ = CELLS[self.cell]
        xw_LxBxG = jnp.swapaxes(self.input(x_BxLxD), 0, 1)  # scan runs over the leading axis
        dtype = xw_LxBxG.dtype
        zeros_BxH = jnp.zeros((x_BxLxD.shape[0], self.recurrent.in_features), jnp.float32)

        def scan_step(carry, xw_BxG):
            h_BxH, c_BxH = carry
            hu_BxG = self.recurrent(h_BxH.astype(dtype))
            h_BxH, c_BxH = cell(xw_BxG.astype(jnp.float32), hu_BxG.astype(jnp.float32),
                                h_BxH, c_BxH)
            return (h_BxH, c_BxH), h_BxH.astype(dtype)

        _, h_LxBxH = jax.lax.scan(scan_step, (zeros_BxH, zeros_BxH), xw_LxBxG)
        return jnp.swapaxes(h_LxBxH, 0, 1)


class Recurrent(nnx.Module):
    """`layers` stacked `cell` layers ("lstm", "gru" or "rnn") of `hidden` units.

    What the net does follows from its input. (L,) token ids: a character-level language model
    over `num_classes` tokens, embedded in `embed` dimensions, with logits at every position,
    (B, L) -> (B, L, V). Anything longer, e.g. an (H, W, C) image read as H rows of W*C
    features: a sequence classifier from the last position's hidden state, (B, ...) -> (B, K).
    `forget_bias` is added to the LSTM forget gate's initial bias: 0 as in PyTorch; Keras adds
    1 (Jozefowicz et al. 2015), so that at first the cell keeps more than half its memory.
    `chrono` = T_max > 0 initialises the LSTM's forget and input gate biases instead by Tallec
    and Ollivier's chrono initialisation, for dependencies up to about T_max steps apart.
    """

    def __init__(self, *, input_shape, num_classes, cell="lstm", layers=2, hidden=256,
                 embed=64, dropout=0.0, forget_bias=0.0, chrono=0, dtype="float32",
                 rngs: nnx.Rngs):
        if cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; known: {', '.join(CELLS)}")
        for field, value in (("forget_bias", forget_bias), ("chrono", chrono)):
            if value and cell != "lstm":
                raise ValueError(f"model.{field} applies to the lstm cell, not to {cell!r}")
        if chrono and forget_bias:
            raise ValueError("model.chrono sets the forget gate's bias itself: leave "
                             "model.forget_bias at 0 with it")
        if chrono == 1:
            raise ValueError("model.chrono=1 spans no steps: 0 (off) or T_max of 2 or more")
        self.dtype = compute_dtype(dtype)
        self.language_model = len(input_shape) == 1
        if self.language_model:
            self.embed = nnx.Embed(num_classes, embed, dtype=self.dtype, rngs=rngs)
            features = embed
        else:
            self.embed = None
            features = math.prod(input_shape[1:])
        self.layers = nnx.List()
        for _ in range(layers):
            self.layers.append(RecurrentLayer(cell, features, hidden, self.dtype, rngs,
                                              forget_bias, chrono))
            features = hidden
        self.head = nnx.Linear(hidden, num_classes, dtype=self.dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, train=False, rngs=None) -> jax.Array:
        rngs = None if rngs is None else nnx.Rngs(dropout=rngs)
        if self.language_model:
            x_BxLxD = self.embed(x)
        else:
            x_BxLxD = x.reshape(*x.shape[:2], -1).astype(self.dtype)
        for layer in self.layers:  # dropout on each layer's input, and before the head
            x_BxLxD = self.dropout(x_BxLxD, deterministic=not train, rngs=rngs)
            x_BxLxD = layer(x_BxLxD)
        x_BxLxD = self.dropout(x_BxLxD, deterministic=not train, rngs=rngs)
        if not self.language_model:
            x_BxLxD = x_BxLxD[:, -1]
        return self.head(x_BxLxD).astype(jnp.float32)
