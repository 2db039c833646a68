import jax
import numpy as np
import pytest
from flax import nnx

from experiments.run import build
from train.trainer import Trainer

from helpers import tiny_config, trainer_for


def first_batches(dataset, config, n):
    batches = dataset.train_batches(config.dataset.batch_size, seed=config.seed, epoch=0)
    return [next(batches) for _ in range(n)]


def copy(tree):
    return jax.tree.map(lambda x: x.copy(), tree)


def run_steps(trainer, state, batches):
    for batch in batches:
        state, metrics = trainer.train_step(state, trainer.put(batch))
        jax.block_until_ready(metrics)  # as train.loop bounds it: XLA's CPU collectives over
    return state, metrics               # simulated devices can abort with steps queued


@pytest.mark.parametrize("name", ["digits_mlp.py", "digits_cnn.py"])
def test_train_step_is_pure_and_compiled_once(name):
    config = tiny_config(name, **{"model.dropout": 0.3})
    trainer, dataset = trainer_for(config)
    batches = first_batches(dataset, config, 4)
    a, metrics_a = run_steps(trainer, copy(trainer.initial_state), batches)
    b, metrics_b = run_steps(trainer, copy(trainer.initial_state), batches)
    jax.tree.map(np.testing.assert_array_equal, (a, metrics_a), (b, metrics_b))
    assert int(a.step) == 4
    assert trainer.train_step._cache_size() == 1  # steps 2..8 reused the first compilation


def test_train_step_updates_params_and_batch_norm_statistics():
    config = tiny_config("digits_cnn.py", **{"optimizer.schedule": "constant"})
    trainer, dataset = trainer_for(config)
    before = copy(trainer.initial_state)
    batch = trainer.put(first_batches(dataset, config, 1)[0])
    after, _ = trainer.train_step(copy(before), batch)
    for old, new in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
        assert not np.array_equal(old, new)
    stats_before, stats_after = jax.tree.leaves(before.model_state), jax.tree.leaves(after.model_state)
    assert stats_before and all(not np.array_equal(x, y) for x, y in zip(stats_before, stats_after))


def test_batch_sizes_that_do_not_divide_over_devices_name_the_nearest_valid_ones():
    with pytest.raises(ValueError, match=r"batch_size=30 does not divide over 8 devices.*use 24 or 32"):
        trainer_for(tiny_config(**{"dataset.batch_size": 30}))
    with pytest.raises(ValueError, match="needs 16 devices but 8 cpu devices were found"):
        trainer_for(tiny_config(**{"parallel.mesh": "data=16"}))


def test_pmap_steps_the_state_checkpoints_hold_and_leaves_the_callers_model_alone():
    config = tiny_config("digits_cnn.py", **{"parallel.strategy": "pmap", "model.batch_norm": True,
                                             "model.dropout": 0.0})
    model, dataset = build(config)
    trainer = Trainer(config, model, dataset)
    # the batch statistics over every device's rows are the adapter's business, not the model's
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert norms and all(m.axis_name is None for m in norms)
    state = copy(trainer.initial_state)
    after, _ = run_steps(trainer, state, first_batches(dataset, config, 2))
    assert jax.tree.structure(after) == jax.tree.structure(trainer.initial_state)
    for new, old in zip(jax.tree.leaves(after), jax.tree.leaves(trainer.initial_state)):
        assert new.shape == old.shape and new.sharding == old.sharding
    assert int(after.step) == 2
