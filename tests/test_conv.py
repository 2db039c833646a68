"""im2col convolutions (nets/conv.py) equal XLA's, forward and backward, and leave the CNN's
parameters exactly nnx.Conv's."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

import nets
from nets.conv import (CONV_IMPLS, FASTEST, auto_conv_general_dilated,
                       im2col_conv_general_dilated)

NHWC = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, k, padding):
    return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC,
                                    precision=lax.Precision.HIGHEST)


def im2col_conv(x, k, padding):
    return im2col_conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC,
                                       precision=lax.Precision.HIGHEST)


CASES = [  # (batch, height, width, cin, cout, kernel, padding)
    (8, 28, 28, 1, 32, (3, 3), "SAME"),     # the CNN's first conv
    (8, 14, 14, 32, 64, (3, 3), "SAME"),    # and its second
    (3, 7, 5, 3, 4, (3, 3), "SAME"),        # odd sizes, 3 channels
    (2, 9, 6, 1, 5, (5, 3), "SAME"),
    (2, 8, 8, 3, 2, (2, 4), "SAME"),        # even kernels pad unevenly
    (2, 9, 7, 3, 4, (3, 3), "VALID"),
    (2, 6, 6, 2, 3, (3, 3), ((2, 0), (1, 3))),
]


@pytest.mark.parametrize("b,h,w,cin,cout,kernel,padding", CASES)
def test_im2col_equals_xla_forward_and_gradients(b, h, w, cin, cout, kernel, padding):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, h, w, cin))
    k = jax.random.normal(kk, (*kernel, cin, cout)) / np.sqrt(kernel[0] * kernel[1] * cin)
    y_xla, vjp_xla = jax.vjp(lambda x, k: xla_conv(x, k, padding), x, k)
    y_im2col, vjp_im2col = jax.vjp(lambda x, k: im2col_conv(x, k, padding), x, k)
    assert y_im2col.shape == y_xla.shape
    np.testing.assert_allclose(y_im2col, y_xla, atol=1e-5, rtol=1e-5)
    g = jax.random.normal(kg, y_xla.shape)
    for got, want in zip(vjp_im2col(g), vjp_xla(g)):  # d/dx, d/dkernel
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


def test_im2col_in_bfloat16_is_as_close_as_bfloat16_allows():
    kx, kk = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (4, 14, 14, 32))
    k = jax.random.normal(kk, (3, 3, 32, 64)) / np.sqrt(9 * 32)
    exact = xla_conv(x, k, "SAME")
    for conv in (xla_conv, im2col_conv):
        y = conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), "SAME")
        assert y.dtype == jnp.bfloat16
        # 288-term sums of bf16 products (8-bit mantissa) accumulated in float32
        np.testing.assert_allclose(y.astype(jnp.float32), exact, atol=3e-2, rtol=3e-2)
    y_xla = xla_conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), "SAME")
    y_im2col = im2col_conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), "SAME")
    np.testing.assert_allclose(y_im2col.astype(jnp.float32), y_xla.astype(jnp.float32),
                               atol=2e-2, rtol=2e-2)


def test_what_im2col_does_not_cover_goes_to_xla_unchanged():
    x = jax.random.normal(jax.random.key(2), (2, 9, 9, 4))
    k = jax.random.normal(jax.random.key(3), (3, 3, 4, 4))
    for kwargs in ({"window_strides": (2, 2)}, {"rhs_dilation": (2, 2)},
                   {"feature_group_count": 2}):
        kernel = k[:, :, :2] if "feature_group_count" in kwargs else k
        args = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": NHWC, **kwargs}
        got = jax.jit(lambda x, k: im2col_conv_general_dilated(x, k, **args))
        assert "dot_general" not in str(got.lower(x, kernel).as_text())
        np.testing.assert_array_equal(got(x, kernel), lax.conv_general_dilated(x, kernel, **args))


@pytest.mark.parametrize("fastest", [None, im2col_conv_general_dilated])
def test_auto_runs_the_fastest_measured_on_the_backend(monkeypatch, fastest):
    if fastest is not None:
        monkeypatch.setitem(FASTEST, jax.default_backend(), fastest)
    else:
        monkeypatch.delitem(FASTEST, jax.default_backend(), raising=False)
    x, k = jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 2))
    text = jax.jit(lambda x, k: auto_conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=NHWC)).lower(x, k).as_text()
    assert ("convolution" in text) == (fastest is None)
    assert ("dot_general" in text) == (fastest is not None)


def build(conv_impl, **fields):
    return nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, seed=0,
                      conv_impl=conv_impl, **fields)


CNN_PARAMS = {  # as nnx.Conv and nnx.Linear lay them out, before conv_impl existed
    "['convs'][0]['bias'].value": (32,), "['convs'][0]['kernel'].value": (3, 3, 1, 32),
    "['convs'][1]['bias'].value": (64,), "['convs'][1]['kernel'].value": (3, 3, 32, 64),
    "['dense']['bias'].value": (128,), "['dense']['kernel'].value": (3136, 128),
    "['head']['bias'].value": (10,), "['head']['kernel'].value": (128, 10),
}


def test_the_cnn_parameters_are_nnx_convs_own():
    """Paths, shapes, dtypes and values: a checkpoint of the CNN restores whichever conv_impl."""
    def tree(state):
        return {jax.tree_util.keystr(path): leaf
                for path, leaf in jax.tree_util.tree_leaves_with_path(state)}

    reference = tree(nnx.state(build("xla")))
    for impl in CONV_IMPLS:
        model = build(impl)
        got = tree(nnx.state(model))
        assert {path: leaf.shape for path, leaf in got.items()} == CNN_PARAMS
        for path, leaf in got.items():
            assert leaf.dtype == jnp.float32
            np.testing.assert_array_equal(leaf, reference[path])
        for conv, (cin, cout) in zip(model.convs, [(1, 32), (32, 64)]):
            assert type(conv) is nnx.Conv
            plain = nnx.Conv(cin, cout, (3, 3), rngs=nnx.Rngs(0))
            assert (jax.tree.map(jnp.shape, tree(nnx.state(conv)))
                    == jax.tree.map(jnp.shape, tree(nnx.state(plain))))


@pytest.mark.parametrize("fields", [{}, {"batch_norm": True, "channels": (8, 16)},
                                    {"dtype": "bfloat16"}])
def test_the_cnn_computes_the_same_logits_and_gradients_with_either_conv(fields):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16))
    tol = 5e-2 if fields.get("dtype") == "bfloat16" else 1e-5
    results = []
    for impl in ("xla", "im2col"):
        graphdef, params = nnx.split(build(impl, **fields))

        @jax.jit
        def loss_and_grads(params):
            def loss(params):
                logits = nnx.merge(graphdef, params)(x, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
            return jax.value_and_grad(loss, has_aux=True)(params)

        results.append(loss_and_grads(params))
    ((loss_xla, logits_xla), grads_xla), ((loss_im2col, logits_im2col), grads_im2col) = results
    assert logits_im2col.dtype == jnp.float32
    np.testing.assert_allclose(logits_im2col, logits_xla, atol=tol, rtol=tol)
    np.testing.assert_allclose(loss_im2col, loss_xla, atol=tol, rtol=tol)
    leaves_xla, leaves_im2col = jax.tree.leaves(grads_xla), jax.tree.leaves(grads_im2col)
    assert len(leaves_xla) == len(leaves_im2col) > 0
    for got, want in zip(leaves_im2col, leaves_xla):
        scale = float(jnp.abs(want).max()) or 1.0
        np.testing.assert_allclose(got / scale, want / scale, atol=tol)


def test_an_unknown_conv_impl_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown conv_impl 'fast'; known: auto, xla, im2col"):
        build("fast")
