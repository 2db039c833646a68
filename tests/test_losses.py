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


def _small_gpt(vocab=97, length=32, width=16):
    import nets
    return nets.build("gpt", input_shape=(length,), num_classes=vocab, layers=2, heads=2,
                      width=width, dropout=0.1, seed=3)


def _objective_and_grads(model, task, batch):
    import jax
    from flax import nnx

    from train.step import make_loss_fn
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_of = make_loss_fn(graphdef, task)
    (objective, (measured, _)), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
        params, rest, batch, jax.random.key(7))
    return objective, measured, grads


def test_the_chunked_language_model_loss_equals_all_positions_at_once():
    """loss.chunk makes the logits a few positions at a time; the objective (with label
    smoothing), the plain loss, the accuracy and every gradient (dropout on, same masks) are
    those of all positions at once."""
    import jax
    rng = np.random.default_rng(0)
    batch = {"inputs": jnp.asarray(rng.integers(0, 97, (4, 32)), jnp.int32),
             "targets": jnp.asarray(rng.integers(0, 97, (4, 32)), jnp.int32)}
    model = _small_gpt()
    whole = _objective_and_grads(model, losses.make_task("classification", "cross_entropy",
                                                         0.1), batch)
    chunked = _objective_and_grads(model, losses.make_task(
        "classification", "cross_entropy", 0.1, chunk=8), batch)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5)
    for k in ("loss", "accuracy"):
        np.testing.assert_allclose(chunked[1][k], whole[1][k], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(chunked[2]), jax.tree.leaves(whole[2])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    assert float(whole[1]["loss"]) > 4.0  # log(97) = 4.57: untrained, so not a trivial zero


def test_the_chunked_loss_plans_a_fraction_of_the_logits_memory():
    """What the chunks are for: XLA's own memory plan for the gradient step holds the float32
    logits of one chunk, not of the whole sequence (8 x 128 x 8,192 of them: 32 MiB). A long
    vocabulary and a short sequence, so that the attention's share of the plan is small
    (measured: 140 MiB all at once, 28 MiB in chunks of 16)."""
    import jax
    from flax import nnx

    from train.step import make_loss_fn
    model = _small_gpt(vocab=8192, length=128, width=32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {k: jax.ShapeDtypeStruct((8, 128), jnp.int32) for k in ("inputs", "targets")}

    def temporaries(chunk):
        task = losses.make_task("classification", "cross_entropy", chunk=chunk)
        grad = jax.jit(jax.grad(lambda p, b: make_loss_fn(graphdef, task)(
            p, rest, b, jax.random.key(0))[0]))
        return grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    whole, chunked = temporaries(0), temporaries(16)
    assert whole > 32 * 2**20, whole  # the logits alone are 32 MiB
    assert chunked < whole / 4, (chunked, whole)


def test_a_chunk_that_cannot_apply_is_refused_in_one_line():
    from train.step import check_chunked
    task = losses.make_task("classification", "cross_entropy", chunk=5)
    with pytest.raises(ValueError, match=r"loss.chunk=5 does not divide the sequence of 32 "
                                         r"positions; use a divisor such as 4"):
        check_chunked(_small_gpt(), task, (32,))
    import nets
    mlp = nets.build("mlp", input_shape=(8,), num_classes=3)
    with pytest.raises(ValueError, match="applies to a language model's logits per position"):
        check_chunked(mlp, task, (8,))
    with pytest.raises(ValueError, match="not to a regression"):
        losses.make_task("regression", "mse", chunk=4)
