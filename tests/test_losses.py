import math

import jax.numpy as jnp
import numpy as np
import pytest

from train import losses


def test_softmax_cross_entropy_matches_hand_computation():
    logits = jnp.array([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    z = math.exp(2.0) + math.exp(1.0) + math.exp(0.1)
    expected = [-math.log(math.exp(2.0) / z), -math.log(1 / 3)]
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), expected, rtol=1e-6)


def test_label_smoothing_spreads_target_mass():
    logits = jnp.array([[2.0, 1.0, 0.1]])
    log_p = np.log(np.exp([2.0, 1.0, 0.1]) / np.exp([2.0, 1.0, 0.1]).sum())
    q = np.array([1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, jnp.array([0]), label_smoothing=0.1),
        [-(q * log_p).sum()], rtol=1e-6)


def test_sigmoid_binary_cross_entropy_matches_hand_computation():
    logits = jnp.array([[0.3, -1.2]])
    targets = jnp.array([[1.0, 0.0]])
    p = 1 / (1 + np.exp(-np.array([0.3, -1.2])))
    y = np.array([1.0, 0.0])
    expected = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(logits, targets), [expected],
                               rtol=1e-6)


def test_mean_squared_error_matches_hand_computation():
    got = losses.mean_squared_error(jnp.array([[1.0, 2.0, 4.0]]), jnp.array([[0.0, 2.0, 1.0]]))
    np.testing.assert_allclose(got, [(1 + 0 + 9) / 3], rtol=1e-6)


def test_classification_losses_take_integer_labels():
    logits = jnp.array([[0.5, -0.5]])
    np.testing.assert_allclose(losses.classification_loss("mse")(logits, jnp.array([1])),
                               [((0.5 - 0) ** 2 + (-0.5 - 1) ** 2) / 2], rtol=1e-6)
    p = 1 / (1 + np.exp(-np.array([0.5, -0.5])))
    bce = np.mean([-np.log(1 - p[0]), -np.log(p[1])])
    np.testing.assert_allclose(
        losses.classification_loss("binary_cross_entropy")(logits, jnp.array([1])), [bce],
        rtol=1e-6)


def test_unknown_loss_lists_known_ones():
    with pytest.raises(ValueError, match="known: binary_cross_entropy, cross_entropy, mse"):
        losses.classification_loss("hinge")
