"""A trainer given a function that builds the model creates the state in one compiled program,
directly in its place on the mesh: the same numbers as a model built eagerly, array by array."""
import jax
import numpy as np
import pytest

import nets
from experiments.run import build
from train.trainer import Trainer

from helpers import tiny_config


@pytest.mark.parametrize("name,strategy", [("digits_mlp.py", "dp"), ("digits_cnn.py", "fsdp"),
                                           ("digits_cnn.py", "pmap")])
def test_a_compiled_initialisation_equals_the_eager_one_in_the_same_layout(name, strategy):
    config = tiny_config(name, **{"parallel.strategy": strategy, "optimizer.ema_decay": 0.9})
    if name == "digits_cnn.py":
        config.model.batch_norm = True  # model state beside the parameters
        config.model.dense = 128           # a dense kernel large enough for fsdp to split
    model, dataset = build(config)
    fields = {k: v for k, v in config.model.items() if k != "name"}

    def make():
        return nets.build(config.model.name, input_shape=dataset.input_shape,
                          num_classes=dataset.num_outputs, seed=config.seed, **fields)

    eager, compiled = Trainer(config, model, dataset), Trainer(config, make, dataset)
    assert eager.graphdef == compiled.graphdef
    flat_eager = jax.tree_util.tree_flatten_with_path(eager.initial_state)[0]
    flat_compiled = jax.tree.leaves(compiled.initial_state)
    assert len(flat_eager) == len(flat_compiled) > 4
    for (path, a), b in zip(flat_eager, flat_compiled):
        assert a.sharding == b.sharding, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))
    if strategy == "fsdp":  # some array really is split, so each device made only its share
        assert any(len(a.addressable_shards) == 8 and a.addressable_shards[0].data.shape
                   != a.shape for a in flat_compiled)
