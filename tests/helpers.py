"""Small builders shared by the training tests."""
from experiments.config import load_config
from experiments.run import build
from train.trainer import Trainer

from conftest import config_path


def tiny_config(name="digits_mlp.py", **overrides):
    """The tiny variant of an experiment config with `overrides` ("a.b": value) applied."""
    config = load_config(config_path(name) + ":tiny")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def trainer_for(config):
    model, dataset = build(config)
    return Trainer(config, model, dataset.steps_per_epoch(config.dataset.batch_size)), dataset
