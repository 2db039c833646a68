"""A small fast CIFAR net after airbench94 (Jordan 2024: 94 % on CIFAR-10 in 2.59 s on an A100).

    stem: 2x2 convolution (no padding) with bias, GELU
    per block (`widths`, each halving height and width):
        3x3 conv -> 2x2 max-pool -> batch norm -> GELU -> 3x3 conv -> batch norm -> GELU
    global max-pool, linear head without bias, logits times `logit_scale`

Batch norm learns a shift only (its scale stays 1), as in airbench. With `identity_init`, each
3x3 convolution's first min(in, out) output channels start as copies of its input channels
(PyTorch's `dirac_`), the rest uniform in +-1/sqrt(fan_in) (PyTorch's default). With
`tta_flip`, evaluation (`train=False`) returns the mean of the logits of each image and its
horizontal mirror; training never does. airbench's stem is frozen to whiten 2x2 patches of the
training images; here it is learned, since a net is built without seeing data.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from nets.cnn import max_pool_2x2
from nets.dtypes import compute_dtype, output_dtype

STEM_KERNEL = 2  # airbench's 2x2 patches: 32x32 -> 31x31, then 15, 7, 3 after three blocks

# PyTorch's default for convolutions and linear layers: uniform with variance 1 / (3 fan_in)
uniform_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def dirac_uniform_init(key, shape, dtype=jnp.float32):
    """`uniform_init`, then output channel o < min(in, out) set to pass input channel o through
    unchanged (a 1 at the kernel's centre, 0 elsewhere)."""
    kernel = uniform_init(key, shape, dtype)
    height, width, in_channels, out_channels = shape
    n = min(in_channels, out_channels)
    eye = jnp.zeros((height, width, in_channels, n), dtype)
    eye = eye.at[height // 2, width // 2].set(jnp.eye(in_channels, n, dtype=dtype))
    return kernel.at[..., :n].set(eye)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


class ConvBlock(nnx.Module):
    """conv -> 2x2 max-pool -> batch norm -> GELU -> conv -> batch norm -> GELU."""

    def __init__(self, in_channels, channels, bn_momentum, kernel_init, dtype, rngs):
        self.convs = nnx.List([
            nnx.Conv(i, channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                     kernel_init=kernel_init, dtype=dtype, rngs=rngs)
            for i in (in_channels, channels)])
        self.norms = nnx.List([
            nnx.BatchNorm(channels, momentum=bn_momentum, use_scale=False, dtype=dtype,
                          rngs=rngs)
            for _ in range(2)])

    def __call__(self, x_BxHxWxC, train: bool):
        x = max_pool_2x2(self.convs[0](x_BxHxWxC))
        x = gelu(self.norms[0](x, use_running_average=not train))
        return gelu(self.norms[1](self.convs[1](x), use_running_average=not train))


def gelu(x):
    return jax.nn.gelu(x, approximate=False)  # the erf form, PyTorch's default


class SpeedNet(nnx.Module):
    """airbench94's net for (height, width, channels) images: `widths[i]` channels in block i
    (64, 256, 256 in airbench; about 2M parameters), a `stem_width`-channel stem,
    `bn_momentum` the share of batch norm's running statistics kept each step (0.6: they
    follow the last few batches), logits times `logit_scale` (1/9)."""

    def __init__(self, *, input_shape, num_classes, widths=(64, 256, 256), stem_width=24,
                 bn_momentum=0.6, logit_scale=1 / 9, identity_init=True, tta_flip=True,
                 dtype="float32", rngs: nnx.Rngs):
        widths = tuple(widths) if isinstance(widths, (tuple, list)) else widths
        _check(isinstance(widths, tuple) and len(widths) > 0
               and all(_is_positive_int(w) for w in widths),
               f"model.widths must be one or more positive channel counts, e.g. (64, 256, 256); "
               f"got {widths!r}")
        _check(_is_positive_int(stem_width),
               f"model.stem_width must be a positive channel count, e.g. 24; got {stem_width!r}")
        _check(isinstance(bn_momentum, (int, float)) and not isinstance(bn_momentum, bool)
               and 0 <= bn_momentum < 1,
               f"model.bn_momentum must be in [0, 1) (the share of running statistics kept per "
               f"step), e.g. 0.6; got {bn_momentum!r}")
        _check(isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool)
               and logit_scale > 0,
               f"model.logit_scale must be a number > 0, e.g. 0.1111; got {logit_scale!r}")
        for name, value in (("identity_init", identity_init), ("tta_flip", tta_flip)):
            _check(isinstance(value, bool), f"model.{name} must be True or False; got {value!r}")
        _check(len(input_shape) == 3,
               f"a SpeedNet takes (height, width, channels) images, not {tuple(input_shape)}")
        height, width, in_channels = input_shape
        smallest = STEM_KERNEL - 1 + 2 ** len(widths)
        _check(min(height, width) >= smallest,
               f"a {height}x{width} input shrinks below 1x1 after the stem and {len(widths)} "
               f"pooling blocks (it needs at least {smallest}x{smallest}); use fewer "
               f"model.widths or larger images")
        self.dtype = dt = compute_dtype(dtype)
        self.tta_flip = tta_flip
        self.logit_scale = float(logit_scale)
        self.stem = nnx.Conv(in_channels, stem_width, (STEM_KERNEL, STEM_KERNEL),
                             padding="VALID", kernel_init=uniform_init, dtype=dt, rngs=rngs)
        kernel_init = dirac_uniform_init if identity_init else uniform_init
        self.blocks = nnx.List()
        in_channels = stem_width
        for channels in widths:
            self.blocks.append(ConvBlock(in_channels, channels, bn_momentum, kernel_init, dt,
                                         rngs))
            in_channels = channels
        self.head = nnx.Linear(in_channels, num_classes, use_bias=False,
                               kernel_init=uniform_init, dtype=dt, rngs=rngs)

    def logits(self, x_BxHxWxC, *, train=False) -> jax.Array:
        """The logits of `x_BxHxWxC` as it is: no test-time augmentation."""
        x = gelu(self.stem(x_BxHxWxC.astype(self.dtype)))
        for block in self.blocks:
            x = block(x, train)
        x_BxC = jnp.max(x, axis=(1, 2))
        return (self.head(x_BxC) * self.logit_scale).astype(output_dtype(self.dtype))

    def __call__(self, x_BxHxWxC, *, train=False, rngs=None) -> jax.Array:
        if train or not self.tta_flip:
            return self.logits(x_BxHxWxC, train=train)
        # each image beside its mirror (B, 2, H, W, C) -> (2B, ...): a device's rows stay its own
        both = jnp.stack([x_BxHxWxC, x_BxHxWxC[:, :, ::-1]], axis=1)
        logits = self.logits(both.reshape(-1, *x_BxHxWxC.shape[1:]))
        return logits.reshape(x_BxHxWxC.shape[0], 2, -1).mean(axis=1)
