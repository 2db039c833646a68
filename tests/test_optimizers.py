import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs.common import base_config
from train.optimizers import OPTIMIZERS, SCHEDULES, learning_rate_schedule, make_optimizer


def optimizer_config(**fields):
    cfg = base_config().optimizer
    cfg.update(fields)
    return cfg


def logistic_problem():
    """A linearly separable 2-class problem; returns params and the loss function."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.0]) > 0).astype(np.int32)
    params = {"w": jnp.zeros((5, 2)), "b": jnp.zeros((2,))}

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss


def run(tx, params, loss, steps=60):
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state)
    return params


LEARNING_RATES = {"sgd": 0.5, "adam": 0.05, "adamw": 0.05, "rmsprop": 0.02}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_and_schedule_lowers_the_loss(name, schedule):
    params, loss = logistic_problem()
    cfg = optimizer_config(name=name, learning_rate=LEARNING_RATES[name], schedule=schedule,
                           warmup_steps=5, decay_every=30, decay_factor=0.5, weight_decay=1e-4)
    trained = run(make_optimizer(cfg, total_steps=60), params, loss)
    assert loss(trained) < 0.5 * loss(params), f"{name}/{schedule}: {loss(params)} -> {loss(trained)}"


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_variants_lower_the_loss(momentum, nesterov):
    params, loss = logistic_problem()
    cfg = optimizer_config(name="sgd", learning_rate=0.2, momentum=momentum, nesterov=nesterov)
    assert loss(run(make_optimizer(cfg, 60), params, loss)) < 0.5 * loss(params)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_spares_biases(name):
    params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
    cfg = optimizer_config(name=name, learning_rate=0.1, weight_decay=0.5, momentum=0.0)
    tx = make_optimizer(cfg, 10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["kernel"][0, 0]) < 1.0  # decayed
    np.testing.assert_array_equal(new["bias"], params["bias"])  # not decayed


def test_clip_norm_bounds_the_update():
    params = {"w": jnp.zeros((4,))}
    cfg = optimizer_config(name="sgd", learning_rate=1.0, momentum=0.0, clip_norm=1.0)
    tx = make_optimizer(cfg, 10)
    updates, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)


def test_schedules_have_the_documented_shape():
    warm = learning_rate_schedule(
        optimizer_config(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10), 110)
    np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(60), warm(110)],
                               [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    step = learning_rate_schedule(
        optimizer_config(learning_rate=1.0, schedule="step", decay_every=10, decay_factor=0.1), 100)
    np.testing.assert_allclose([step(0), step(9), step(10), step(25)], [1.0, 1.0, 0.1, 0.01],
                               rtol=1e-6)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known: adam, adamw, rmsprop, sgd"):
        make_optimizer(optimizer_config(name="lion"), 10)
    with pytest.raises(ValueError, match="known: constant, step, warmup_cosine"):
        make_optimizer(optimizer_config(schedule="linear"), 10)


def test_warmup_in_epochs_follows_the_steps_per_epoch_and_the_rate_the_batch_size():
    cfg = optimizer_config(learning_rate=0.4, schedule="warmup_cosine", warmup_epochs=2.0,
                           reference_batch_size=256)
    schedule = learning_rate_schedule(cfg, 1000, steps_per_epoch=10, batch_size=128)
    # 2 epochs of 10 steps of warmup, to 0.4 x 128 / 256 = 0.2 (Goyal et al. 2017's rule)
    np.testing.assert_allclose([schedule(10), schedule(20)], [0.1, 0.2], rtol=1e-6)
    cfg.warmup_steps = 5  # steps, where given, win over epochs
    schedule = learning_rate_schedule(cfg, 1000, steps_per_epoch=10, batch_size=256)
    np.testing.assert_allclose(schedule(5), 0.4, rtol=1e-6)
