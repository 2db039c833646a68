"""A small convolutional network: conv -> (batch norm) -> activation -> 2x2 pool blocks, then a
dense head."""
import jax
from flax import nnx

from nets import activations
from nets.conv import conv_impl as conv_function
from nets.inits import bias_init as bias_initialiser, kernel_init
from nets.dtypes import compute_dtype, output_dtype
from nets.partitioning import named


zeros, ones = nnx.initializers.zeros_init(), nnx.initializers.ones_init()


def max_pool_2x2(x_BxHxWxC):
    """2x2 max-pool by reshape-then-max.

    `lax.reduce_window` has a slow backward pass on CPU (docs/design.md, section 9: 105 vs 61
    ms/step on the MNIST CNN); a reshape is exact for stride-2 windows. Odd edges are cropped.
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def avg_pool_2x2(x_BxHxWxC):
    """2x2 average-pool, the same reshape as `max_pool_2x2` with a mean. Unlike the max, a
    smooth function of its input: its gradient has no argmax to switch when two values tie."""
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


POOLS = {"max": max_pool_2x2, "avg": avg_pool_2x2}


class CNN(nnx.Module):
    """`channels[i]` filters of `kernel_size` per block, each block halving height and width
    (`pool`: a 2x2 max or avg pool), then a hidden dense layer of `dense` units (none if 0) and
    the linear head. `init` names the weights' initialisation (lecun, glorot, he) and
    `bias_init` the biases' (zeros, or uniform as PyTorch draws them): `nets.inits`.
    `conv_impl` names how the convolutions are computed (`nets.conv`: auto =
    the fastest measured on the backend; xla; im2col): the parameters are nnx.Conv's whichever
    it is."""

    def __init__(self, *, input_shape, num_classes, channels=(32, 64), kernel_size=3,
                 dense=128, activation="relu", dropout=0.0, batch_norm=False, init="lecun",
                 bias_init="zeros", dtype="float32", conv_impl="auto", pool="max",
                 rngs: nnx.Rngs):
        activations.activation(activation)  # an unknown name fails here, not at first call
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
        self.pool = pool
        convolve = conv_function(conv_impl)
        self.act = activation
        self.dtype = dt = compute_dtype(dtype)
        weights = kernel_init(init)
        bias_initialiser(bias_init, 1)  # an unknown name fails here
        height, width, in_channels = input_shape
        self.convs = nnx.List()
        self.norms = nnx.List()
        for out_channels in channels:
            self.convs.append(nnx.Conv(
                in_channels, out_channels, (kernel_size, kernel_size), use_bias=not batch_norm,
                kernel_init=named(weights, "window", "window", "conv_in", "conv_out"),
                bias_init=named(bias_initialiser(bias_init, in_channels * kernel_size ** 2),
                                "conv_out"), dtype=dt, conv_general_dilated=convolve,
                rngs=rngs))
            if batch_norm:
                self.norms.append(nnx.BatchNorm(
                    out_channels, momentum=0.9, dtype=dt, scale_init=named(ones, "conv_out"),
                    bias_init=named(zeros, "conv_out"), rngs=rngs))
            in_channels = out_channels
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(
                f"{len(channels)} pooling blocks shrink a {input_shape[0]}x{input_shape[1]} input "
                f"below 1x1; use fewer model.channels"
            )
        features = height * width * in_channels
        self.dense = (nnx.Linear(features, dense, kernel_init=named(weights, "features", "mlp"),
                                 bias_init=named(bias_initialiser(bias_init, features), "mlp"),
                                 dtype=dt, rngs=rngs)
                      if dense else None)
        self.head = nnx.Linear(dense or features, num_classes,
                               kernel_init=named(weights, "mlp" if dense else "features",
                                                 "classes"),
                               bias_init=named(bias_initialiser(bias_init, dense or features),
                                               "classes"), dtype=dt, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def blocks(self, x_BxHxWxC, *, train=False) -> list[jax.Array]:
        """The output of every conv block, (B, H/2^i, W/2^i, channels[i]) for block i: what
        each layer of the net computes from the image (feature maps, for probes and plots)."""
        act = activations.activation(self.act)
        x = x_BxHxWxC.astype(self.dtype)
        outputs = []
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = self.norms[i](x, use_running_average=not train)
            x = POOLS[self.pool](act(x))
            outputs.append(x)
        return outputs

    def __call__(self, x_BxHxWxC, *, train=False, rngs=None) -> jax.Array:
        x = self.blocks(x_BxHxWxC, train=train)[-1]
        x_BxD = x.reshape(x.shape[0], -1)
        if self.dense is not None:
            x_BxD = activations.activation(self.act)(self.dense(x_BxD))
            x_BxD = self.dropout(x_BxD, deterministic=not train, rngs=rngs)
        return self.head(x_BxD).astype(output_dtype(self.dtype))

