"""ResNet v1.5 (He et al. 2015, with the stride of a bottleneck on its 3x3 convolution).

Depths 18 and 34 stack basic blocks (two 3x3 convolutions), 50, 101 and 152 bottleneck blocks
(1x1 -> 3x3 -> 1x1, four times wider out than in). Each convolution is followed by batch norm;
a block's shortcut is the identity, or a strided 1x1 convolution and batch norm where the
shape changes. The variants are rows of `DEPTHS`, not subclasses.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from nets import activations
from nets.dtypes import compute_dtype
from nets.partitioning import constrain, named

# depth -> (blocks per stage, bottleneck?)
DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
STEMS = ("imagenet", "cifar")
EXPANSION = 4  # a bottleneck's output channels over its inner channels

# He initialisation over fan-out, as the reference implementations do for convolutions.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_channels, out_channels, kernel, stride, dtype, rngs):
    pad = kernel // 2  # symmetric padding: the reference's output alignment, not XLA's "SAME"
    return nnx.Conv(in_channels, out_channels, (kernel, kernel), strides=stride,
                    padding=((pad, pad), (pad, pad)), use_bias=False,
                    kernel_init=named(conv_init, "window", "window", "conv_in", "conv_out"),
                    dtype=dtype, rngs=rngs)


def batch_norm(channels, dtype, rngs, zero=False):
    # momentum 0.9 keeps 90 % of the running average per step (PyTorch's momentum=0.1)
    scale = nnx.initializers.zeros if zero else nnx.initializers.ones
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
                         scale_init=named(scale, "conv_out"),
                         bias_init=named(nnx.initializers.zeros, "conv_out"))


class Block(nnx.Module):
    """A residual block: basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1).

    With `zero_init`, the last batch norm's scale starts at 0, so the block starts as the
    identity (Goyal et al. 2017), which helps large-batch training.
    """

    def __init__(self, in_channels, channels, stride, bottleneck, zero_init, activation, dtype,
                 rngs):
        self.act = activation
        if bottleneck:
            shapes = [(in_channels, channels, 1, 1), (channels, channels, 3, stride),
                      (channels, channels * EXPANSION, 1, 1)]
        else:
            shapes = [(in_channels, channels, 3, stride), (channels, channels, 3, 1)]
        self.convs = nnx.List([conv(i, o, k, s, dtype, rngs) for i, o, k, s in shapes])
        self.norms = nnx.List([batch_norm(o, dtype, rngs, zero=zero_init and n == len(shapes) - 1)
                               for n, (_, o, _, _) in enumerate(shapes)])
        out_channels = shapes[-1][1]
        self.project = stride != 1 or in_channels != out_channels
        if self.project:
            self.shortcut_conv = conv(in_channels, out_channels, 1, stride, dtype, rngs)
            self.shortcut_norm = batch_norm(out_channels, dtype, rngs)

    def __call__(self, x_BxHxWxC, train: bool):
        x = x_BxHxWxC
        for i, (conv_, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv_(x), use_running_average=not train)
            if i < len(self.convs) - 1:
                x = activations.activation(self.act)(x)
        shortcut = x_BxHxWxC
        if self.project:
            shortcut = self.shortcut_norm(self.shortcut_conv(shortcut),
                                          use_running_average=not train)
        return activations.activation(self.act)(x + shortcut)


class ResNet(nnx.Module):
    """ResNet-`depth` v1.5 for `num_classes`.

    `stem="imagenet"`: a 7x7 stride-2 convolution and a 3x3 stride-2 max-pool (for 224x224
    images); `stem="cifar"`: one 3x3 stride-1 convolution and no pooling (for 32x32 images).
    `width` is the first stage's channels (64 in the paper); each later stage doubles it.
    `activation` is ReLU in the paper and in torchvision's weights; a smooth one (gelu) makes
    the gradient a continuous function of the weights (tests compare devices' rounding).
    """

    def __init__(self, *, input_shape, num_classes, depth=50, stem="imagenet", width=64,
                 zero_init_residual=False, activation="relu", dtype="float32", rngs: nnx.Rngs):
        activations.activation(activation)  # an unknown name fails here, not at first call
        self.act = activation
        if depth not in DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; known: {', '.join(map(str, DEPTHS))}")
        if stem not in STEMS:
            raise ValueError(f"unknown ResNet stem {stem!r}; known: {', '.join(STEMS)}")
        if len(input_shape) != 3:
            raise ValueError(f"a ResNet takes (height, width, channels) images, not {input_shape}")
        self.dtype = compute_dtype(dtype)
        self.stem = stem
        blocks, bottleneck = DEPTHS[depth]
        in_channels = input_shape[-1]
        kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
        self.stem_conv = conv(in_channels, width, kernel, stride, self.dtype, rngs)
        self.stem_norm = batch_norm(width, self.dtype, rngs)
        in_channels = width
        self.blocks = nnx.List()
        for stage, count in enumerate(blocks):
            channels = width * 2 ** stage
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                self.blocks.append(Block(in_channels, channels, stride, bottleneck,
                                         zero_init_residual, activation, self.dtype, rngs))
                in_channels = channels * EXPANSION if bottleneck else channels
        self.head = nnx.Linear(in_channels, num_classes,
                               kernel_init=named(nnx.initializers.lecun_normal(), "conv_in",
                                                 "classes"),
                               bias_init=named(nnx.initializers.zeros, "classes"),
                               dtype=self.dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC, *, train=False, rngs=None) -> jax.Array:
        x = x_BxHxWxC.astype(self.dtype)
        x = self.stem_norm(self.stem_conv(x), use_running_average=not train)
        x = activations.activation(self.act)(x)
        if self.stem == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:  # the batch split as the step's rules say, between blocks
            x = constrain(block(x, train), "batch", None, None, None)
        x_BxC = jnp.mean(x, axis=(1, 2))
        return self.head(x_BxC).astype(jnp.float32)
