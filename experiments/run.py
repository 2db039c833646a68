"""The only place that knows nets, data and train at once: build them from a config and run."""
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import data
import nets
from train import checkpoint
from train.loop import fit
from train.trainer import Trainer
from train.state import TrainState


def build(config: ml_collections.ConfigDict):
    """The dataset and a freshly initialised model that `config` names."""
    options = {k: v for k, v in config.dataset.items()
               if k not in ("name", "batch_size", "eval_batch_size")}
    options["data_dir"] = options.get("data_dir") or None
    dataset = data.load(config.dataset.name, **options)
    fields = {k: v for k, v in config.model.items() if k != "name"}
    model = nets.build(config.model.name, input_shape=dataset.input_shape,
                       num_classes=dataset.num_classes, seed=config.seed, **fields)
    return model, dataset


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains as `config` says, then restores the best checkpoint and evaluates it on the test split.

    Returns the training summary from `train.loop.fit` plus `"test"`: the test metrics.
    """
    model, dataset = build(config)
    summary = fit(config, workdir, model, dataset)
    summary["test"] = evaluate(workdir, "best", config.test_split)
    return summary


class Restored(NamedTuple):
    config: ml_collections.ConfigDict
    dataset: object  # what data.load returns
    trainer: Trainer
    state: TrainState
    step: int


def restore(workdir: str, which: str | int = "best", *, strategy: str | None = None,
            mesh: str = "data=-1") -> Restored:
    """Restores checkpoint `which` ('best', 'latest' or a step) of `workdir` onto the devices here.

    The state is laid out for `mesh` (default: every device present) and `strategy` (default:
    the one it was trained with), whatever device count and strategy saved it.
    """
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints in {workdir!r}; "
                                f"run `descent train --workdir {workdir} ...` first")
    probe = checkpoint.open_manager(workdir, read_only=True)
    latest = checkpoint.resolve_step(probe, "latest")
    config = ml_collections.ConfigDict(checkpoint.saved_config(probe, latest))
    manager = checkpoint.open_manager(workdir, read_only=True,
                                      monitor=config.early_stopping.monitor)
    step = checkpoint.resolve_step(manager, which)
    config.parallel.mesh = mesh
    config.parallel.strategy = strategy or config.parallel.strategy
    model, dataset = build(config)
    trainer = Trainer(config, model, dataset.steps_per_epoch(config.dataset.batch_size))
    state = checkpoint.restore(manager, step, trainer.initial_state)
    return Restored(config, dataset, trainer, state, step)


def evaluate(workdir: str, which: str | int = "best", split: str = "test") -> dict:
    """Evaluates checkpoint `which` of `workdir` on `split`; writes `eval_<split>_<step>.json`."""
    r = restore(workdir, which)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    metrics = r.trainer.evaluate(
        r.state, r.dataset.eval_batches(split, r.config.dataset.eval_batch_size, **shard))
    metrics = {"split": split, "step": r.step, "checkpoint": str(which), **metrics}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{split}_{r.step}.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return metrics


def predict(restored: Restored, images) -> np.ndarray:
    """Class probabilities, (batch, classes), for a numpy batch of images from a restored run."""
    model = nnx.merge(restored.trainer.graphdef, restored.state.params,
                      restored.state.model_state)
    return np.asarray(jax.nn.softmax(model(jnp.asarray(images), train=False)))
