"""Convolutions computed the fastest way the backend allows, behind nnx.Conv's own parameters.

On CPU, XLA's convolutions run far below its matmul (docs/design.md, 9), so `im2col` offers
a stride-1 2-D convolution as the kh*kw shifted windows of the padded input concatenated along
channels, times the kernel reshaped to (kh*kw*cin, cout): one matmul. `auto` takes, per
backend, the implementation measured fastest there (FASTEST); measured on the 2-core CPU
(experiments/benchmarks/conv.py, jaxlib 0.10.2) the MNIST CNN's train step was 1.2x *slower*
with im2col than with XLA's own convolution, so today every backend uses XLA's.

The functions here have `lax.conv_general_dilated`'s signature, so they plug into nnx.Conv
through its `conv_general_dilated=` argument: the module, its `kernel` (kh, kw, cin, cout) and
`bias` are nnx.Conv's own, and checkpoints restore unchanged whichever is used.
"""
import jax
from jax import lax


def im2col_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                rhs_dilation=None, dimension_numbers=None,
                                feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` as patches x matmul for 2-D NHWC/HWIO, stride 1, undilated,
    ungrouped convolutions; anything else goes to `lax.conv_general_dilated` unchanged."""
    if not _im2col_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count, kwargs):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)
    kh, kw, cin, cout = rhs.shape
    b, h, w, _ = lhs.shape
    if isinstance(padding, str):
        padding = lax.padtype_to_pads((h, w), (kh, kw), (1, 1), padding)
    (top, bottom), (left, right) = padding
    x = lax.pad(lhs, lax.full((), 0, lhs.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0),
                                                  (0, 0, 0)))
    h_out, w_out = h + top + bottom - kh + 1, w + left + right - kw + 1
    # (i, j, c) order along the last axis is the kernel's own (kh, kw, cin) order
    patches_BxHxWxK = jax.numpy.concatenate(
        [x[:, i:i + h_out, j:j + w_out, :] for i in range(kh) for j in range(kw)], axis=-1)
    kernel_KxC = rhs.reshape(kh * kw * cin, cout)
    return lax.dot_general(patches_BxHxWxK, kernel_KxC, (((3,), (0,)), ((), ())),
                           precision=precision)


def _im2col_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, kwargs) -> bool:
    if lhs.ndim != 4 or feature_group_count != 1 or any(v is not None for v in kwargs.values()):
        return False
    if any(s != 1 for s in window_strides):
        return False
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return False
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        return False
    return isinstance(padding, str) and padding in ("SAME", "VALID") or (
        not isinstance(padding, str) and all(lo >= 0 and hi >= 0 for lo, hi in padding))


# backend -> the implementation measured faster there than `lax.conv_general_dilated`; none yet
FASTEST = {}


def auto_conv_general_dilated(*args, **kwargs):
    """The fastest measured implementation for the default backend (FASTEST, else XLA's own);
    decided when traced."""
    return FASTEST.get(jax.default_backend(), lax.conv_general_dilated)(*args, **kwargs)


CONV_IMPLS = {
    "auto": auto_conv_general_dilated,
    "xla": lax.conv_general_dilated,
    "im2col": im2col_conv_general_dilated,
}


def conv_impl(name: str):
    """The `conv_general_dilated` function called `name`; an unknown name lists the known ones."""
    try:
        return CONV_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown conv_impl {name!r}; known: {', '.join(CONV_IMPLS)}") from None
