"""The CIFAR-10 speed recipe: its net (`speednet`) and its config, end to end on mock data."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import nets

from helpers import tiny_config
from test_zoo import matmul_operand_dtypes

SMALL = dict(input_shape=(16, 16, 3), num_classes=10, widths=(8, 16), stem_width=4)


def images(n=8, size=16, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3))


def compiled(model):
    """`model`'s forward pass as one compiled function of (x, train): eager flax dispatches
    every operation on its own, which takes seconds on these CPUs."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x, train: nnx.merge(graphdef, state)(x, train=train),
                      static_argnums=2)  # batch-norm updates in training are dropped
    return lambda x, train: forward(state, x, train)


def test_the_tiny_config_trains_and_evaluates_on_mock_data(tmp_path):
    from experiments import run

    config = tiny_config("cifar10_speed.py")
    with tfds.testing.mock_data(num_examples=32):
        summary = run.train_and_evaluate(config, str(tmp_path), console=False)
    # 32 mock training images less a tenth for validation: one batch of 16 per epoch
    assert summary["latest_step"] == config.epochs == 2
    assert summary["test"]["examples"] == 32 and math.isfinite(summary["test"]["loss"])
    assert set(summary["tests"]) == {"raw", "ema"}  # the moving average is scored beside


def test_flip_tta_averages_the_logits_of_an_image_and_its_mirror():
    tta = compiled(nets.build("speednet", **SMALL, tta_flip=True))
    plain = compiled(nets.build("speednet", **SMALL, tta_flip=False))  # same seed, same weights
    x = images()
    mirrored = x[:, :, ::-1]
    expected = (plain(x, False) + plain(mirrored, False)) / 2
    np.testing.assert_allclose(tta(x, False), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain(x, False), plain(mirrored, False), atol=1e-3)  # not a no-op
    np.testing.assert_allclose(tta(mirrored, False), tta(x, False), rtol=1e-5, atol=1e-5)
    # training sees each image once, as the batch gives it (its augmentation flips already)
    np.testing.assert_array_equal(tta(x, True), plain(x, True))


def test_the_full_net_has_1_971_640_parameters():
    # Counted by hand from the architecture (3 input channels, widths 64/256/256, 10 classes;
    # batch norm learns a shift only, the head has no bias):
    #   stem 2x2 conv 3->24 + bias:   2*2*3*24 + 24                     =       312
    #   block 1: 3x3 24->64, 64->64:  9*24*64 + 64 + 9*64*64 + 64       =    50,816
    #   block 2: 3x3 64->256, 256->256: 9*64*256 + 256 + 9*256*256 + 256 =   737,792
    #   block 3: 3x3 256->256 twice:  2 * (9*256*256 + 256)             = 1,180,160
    #   head 256->10, no bias:        256*10                            =     2,560
    #   total                                                           = 1,971,640
    assert nets.count_params("speednet") == 1_971_640
    assert nets.count_params("speednet", (32, 32, 3), 10, identity_init=False) == 1_971_640


def test_bfloat16_computes_in_bfloat16_and_stays_close_to_float32():
    full = nets.build("speednet", **SMALL, dtype="float32")
    half = nets.build("speednet", **SMALL, dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(half, nnx.Param)))
    x = images()
    for train in (True, False):
        a, b = compiled(full)(x, train), compiled(half)(x, train)
        assert b.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(a)))
        assert float(jnp.max(jnp.abs(a - b))) < 0.05 * scale, (train, a, b)
        assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.75
    graphdef, state = nnx.split(half)
    step = lambda s, x: nnx.merge(graphdef, s)(x, train=True)  # noqa: E731
    assert matmul_operand_dtypes(step, state, x) == {"bfloat16"}
    evaluate = lambda s, x: nnx.merge(graphdef, s)(x, train=False)  # noqa: E731
    assert matmul_operand_dtypes(evaluate, state, x) == {"bfloat16"}


def test_identity_init_passes_input_channels_through():
    model = nets.build("speednet", **SMALL)
    for block in model.blocks:
        for conv in block.convs:
            kernel = conv.kernel[...]
            _, _, fan_in, fan_out = kernel.shape
            n = min(fan_in, fan_out)
            eye = np.zeros((3, 3, fan_in, n))
            eye[1, 1] = np.eye(fan_in, n)
            np.testing.assert_array_equal(kernel[..., :n], eye)
            assert float(jnp.abs(kernel[..., n:]).max(initial=0)) <= 1 / math.sqrt(9 * fan_in)
    plain = nets.build("speednet", **SMALL, identity_init=False).blocks[0].convs[1].kernel[...]
    assert float(jnp.abs(plain[1, 1, 0, 0] - 1)) > 0.5  # drawn, not the identity


@pytest.mark.parametrize("fields, message", [
    (dict(widths=()), r"model.widths must be one or more positive channel counts, e\.g\. "
                      r"\(64, 256, 256\); got \(\)"),
    (dict(widths=(8, 0)), r"model.widths must be .*; got \(8, 0\)"),
    (dict(widths=64), r"model.widths must be .*; got 64"),
    (dict(stem_width=2.5), r"model.stem_width must be a positive channel count, e.g. 24; got 2.5"),
    (dict(bn_momentum=1.0), r"model.bn_momentum must be in \[0, 1\) .*; got 1.0"),
    (dict(logit_scale=0), r"model.logit_scale must be a number > 0, e.g. 0.1111; got 0"),
    (dict(tta_flip="yes"), r"model.tta_flip must be True or False; got 'yes'"),
    (dict(identity_init=1), r"model.identity_init must be True or False; got 1"),
    (dict(dtype="float16"), r"unknown dtype 'float16'; known: float32, bfloat16"),
    (dict(widths=(8, 8, 8, 8)), r"a 16x16 input shrinks below 1x1 after the stem and 4 pooling "
                                r"blocks \(it needs at least 17x17\); use fewer model.widths"),
    (dict(input_shape=(16, 16)), r"a SpeedNet takes \(height, width, channels\) images"),
    (dict(depth=3), r"model 'speednet' has no field.* depth; its fields: widths, stem_width"),
])
def test_bad_fields_name_the_valid_values(fields, message):
    with pytest.raises(ValueError, match=message):
        nets.build("speednet", **{**SMALL, **fields})
