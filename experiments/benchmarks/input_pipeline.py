"""Examples/s of the input pipeline alone against what the CNN's training step consumes.

    python -m experiments.benchmarks.input_pipeline [--repeats 7] [--batches 40]

MNIST-shaped (28x28x1, scaled) and CIFAR-10-shaped (32x32x3, pad-crop-flip augmentation and
mean/std normalisation) data go through the same `ArrayDataset` code the real datasets use,
from random uint8 pixels. The CNN step (conv 32, conv 64, dense 128, Adam, batch 128, one
device) runs on the same machine. Pipeline and step alternate, `--repeats` times; medians.
"""
import argparse
import functools
import statistics
import time

import jax
import numpy as np
from absl import logging

import nets
from data.arrays import ArrayDataset
from data.arrays import scale
from data.images import CROP_FLIP, SPECS
from experiments.configs.mnist_cnn import get_config
from train.trainer import Trainer


def fake(name: str, shape, n: int = 10_000) -> ArrayDataset:
    rng = np.random.default_rng(0)
    spec = SPECS[name]
    arrays = {"inputs": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
              "targets": rng.integers(0, 10, n).astype(np.int32)}
    return ArrayDataset(name, {"train": arrays}, 10,
                        normalize=functools.partial(scale, mean=spec.mean, std=spec.std),
                        augment=CROP_FLIP if spec.augment else None)


def pipeline_rate(dataset, batch: int, batches: int, epoch: int) -> float:
    start = time.perf_counter()
    count = 0
    for b in dataset.train_batches(batch, seed=0, epoch=epoch):
        count += len(b["targets"])
        if count >= batches * batch:
            break
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)

    datasets = {"mnist-shaped": fake("mnist", (28, 28, 1)),
                "cifar10-shaped (augmented)": fake("cifar10", (32, 32, 3))}
    steps = {}
    for label, shape in (("mnist-shaped", (28, 28, 1)), ("cifar10-shaped (augmented)", (32, 32, 3))):
        config = get_config()
        config.dataset.batch_size = config.dataset.eval_batch_size = args.batch
        config.parallel.mesh = "data=1"
        fields = {k: v for k, v in config.model.items() if k != "name"}
        model = nets.build("cnn", input_shape=shape, num_classes=10, **fields)
        trainer = Trainer(config, model, datasets[label])
        batch = trainer.put(next(datasets[label].train_batches(args.batch, seed=0, epoch=0)))
        state, m = trainer.train_step(trainer.initial_state, batch)  # compile
        jax.block_until_ready(m)
        steps[label] = (trainer, state, batch)

    results = {label: {"pipeline": [], "step": []} for label in datasets}
    for r in range(args.repeats):
        for label, dataset in datasets.items():
            results[label]["pipeline"].append(pipeline_rate(dataset, args.batch, args.batches, r))
            trainer, state, batch = steps[label]
            start = time.perf_counter()
            for _ in range(10):
                state, m = trainer.train_step(state, batch)
            jax.block_until_ready(m)
            results[label]["step"].append(10 * args.batch / (time.perf_counter() - start))
            steps[label] = (trainer, state, batch)

    print(f"batch {args.batch}; {args.repeats} alternating repeats; {jax.devices()[0].platform}, "
          f"jax {jax.__version__}")
    print("| data | pipeline examples/s (median, min-max) | CNN step examples/s | ratio |")
    print("|---|---|---|---|")
    for label, r in results.items():
        p, s = statistics.median(r["pipeline"]), statistics.median(r["step"])
        print(f"| {label} | {p:,.0f} ({min(r['pipeline']):,.0f}-{max(r['pipeline']):,.0f}) | "
              f"{s:,.0f} | {p / s:.0f}x |")


if __name__ == "__main__":
    main()
