"""Small builders shared by the training tests."""
import functools

import numpy as np

import data
from data.arrays import scale
from data.images import CROP_FLIP
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
    return Trainer(config, model, dataset), dataset


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files of one TensorBoard run
    directory, read with TensorBoard's own event reader, every event as written (TensorBoard's
    purging of restarted steps is turned off, so a duplicate would show)."""
    import sys
    import types
    # TensorBoard's reader uses TensorFlow when it can import it (it is installed here to
    # prepare datasets); its stub, which this hook selects, keeps TensorFlow out of the tests.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir), purge_orphaned_data=False,
                                             size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def cifar_shaped(n=96, seed=0) -> data.ArrayDataset:
    """CIFAR's pipeline (uint8 pixels, pad-crop-flip, per-channel normalisation) on random
    pixels: the augmentation is what is under test, not the images."""
    rng = np.random.default_rng(seed)
    split = {"inputs": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             "targets": rng.integers(0, 10, n).astype(np.int32)}
    return data.ArrayDataset("cifar_shaped", {"train": split, "test": split}, 10,
                             normalize=functools.partial(scale, mean=(0.49, 0.48, 0.45),
                                                         std=(0.25, 0.24, 0.26)),
                             augment=CROP_FLIP)
