import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nets
from nets.cnn import max_pool_2x2


@pytest.mark.parametrize("activation", sorted(nets.ACTIVATIONS))
def test_mlp_shapes_for_every_activation(activation):
    model = nets.build("mlp", input_shape=(8, 8, 1), num_classes=10, depth=4, width=16,
                       activation=activation)
    assert model(jnp.ones((3, 8, 8, 1))).shape == (3, 10)
    assert len(model.hidden) == 4


def test_mlp_parameter_count_is_weights_plus_biases():
    model = nets.build("mlp", input_shape=(8, 8, 1), num_classes=10, depth=2, width=32)
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)


def test_cnn_shapes_with_and_without_batch_norm():
    for batch_norm in (False, True):
        model = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, channels=(4, 8),
                           dense=16, batch_norm=batch_norm)
        assert model(jnp.ones((2, 28, 28, 1)), train=True).shape == (2, 10)
    assert len(nnx.state(model, nnx.BatchStat)) > 0


def test_max_pool_takes_the_max_of_each_2x2_window():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(max_pool_2x2(x)[0, :, :, 0], [[5.0, 7.0], [13.0, 15.0]])


def test_dropout_only_in_training_and_keyed():
    model = nets.build("mlp", input_shape=(8,), num_classes=4, width=64, dropout=0.5)
    x = jnp.ones((2, 8))
    np.testing.assert_array_equal(model(x), model(x, train=False))
    a = model(x, train=True, rngs=jax.random.PRNGKey(1))
    b = model(x, train=True, rngs=jax.random.PRNGKey(1))
    c = model(x, train=True, rngs=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, model(x))


def test_unknown_names_and_fields_list_what_is_known():
    with pytest.raises(ValueError, match="unknown model 'resnet9'; known: bert, cnn, gpt, gru, lstm, mlp, resnet101"):
        nets.build("resnet9", input_shape=(8,), num_classes=2)
    with pytest.raises(ValueError, match="unknown activation 'swish'; known: gelu, relu, sigmoid, tanh"):
        nets.build("mlp", input_shape=(8,), num_classes=2, activation="swish")
    with pytest.raises(ValueError, match="no field.* heads; its fields: depth, width"):
        nets.build("mlp", input_shape=(8,), num_classes=2, heads=4)
    with pytest.raises(ValueError, match="fewer model.channels"):
        nets.build("cnn", input_shape=(8, 8, 1), num_classes=2, channels=(4, 4, 4, 4))
