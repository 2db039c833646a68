"""Steps/s of the MNIST-shaped CNN on 1 vs 8 devices at equal global batch, per strategy.

    python -m experiments.benchmarks.scaling [--repeats 7] [--steps 10] [--batch 128]

On a CPU machine the 8 devices are simulated (`--xla_force_host_platform_device_count=8`) and
share the same cores: no speed-up is expected, the point is the overhead of sharding. On an
accelerator host it uses the real devices. Variants run interleaved, `--repeats` times each;
medians and min-max are printed.
"""
import argparse
import os
import statistics
import time

import jax
import numpy as np

import nets
from data import ArrayDataset
from experiments.configs.digits_cnn import get_config
from train.trainer import Trainer


def variants(num_devices: int):
    yield "1 device, dp", "data=1", "dp"
    for strategy in ("dp", "fsdp", "pmap"):
        yield f"{num_devices} devices, {strategy}", "data=-1", strategy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", 8)  # before first use; CPU devices only

    rng = np.random.default_rng(0)
    n = args.batch * 4
    dataset = ArrayDataset("random-mnist-shaped", {
        "train": {"inputs": rng.random((n, 28, 28, 1), np.float32),
                  "targets": rng.integers(0, 10, n).astype(np.int32)}}, num_classes=10)
    batches = list(dataset.train_batches(args.batch, seed=0, epoch=0))

    runs = {}
    for label, mesh, strategy in variants(jax.device_count()):
        config = get_config()
        config.dataset.batch_size = config.dataset.eval_batch_size = args.batch
        config.model.dropout = 0.0
        config.parallel.mesh, config.parallel.strategy = mesh, strategy
        model = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10,
                           **{k: v for k, v in config.model.items() if k != "name"})
        trainer = Trainer(config, model, dataset)
        state = trainer.initial_state
        placed = [trainer.put(b) for b in batches]
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, placed[0])
        jax.block_until_ready(metrics)
        first = time.perf_counter() - start
        runs[label] = {"trainer": trainer, "state": state, "batches": placed, "first_s": first,
                       "step_s": []}

    for _ in range(args.repeats):  # interleaved: machine noise hits every variant alike
        for run in runs.values():
            state, trainer = run["state"], run["trainer"]
            start = time.perf_counter()
            for i in range(args.steps):
                state, metrics = trainer.train_step(state, run["batches"][i % len(batches)])
            jax.block_until_ready((state, metrics))
            run["step_s"].append((time.perf_counter() - start) / args.steps)
            run["state"] = state

    base = statistics.median(runs["1 device, dp"]["step_s"])
    device = jax.devices()[0]
    print(f"CNN 28x28x1 (conv 32, conv 64, dense 128), global batch {args.batch}, "
          f"{jax.device_count()} {device.platform} devices ({device.device_kind}), "
          f"jax {jax.__version__}; {args.repeats} interleaved repeats of {args.steps} steps")
    print("| variant | ms/step median | min-max | steps/s | time vs 1 device | first step (compile) s |")
    print("|---|---|---|---|---|---|")
    for label, run in runs.items():
        med = statistics.median(run["step_s"])
        print(f"| {label} | {med * 1e3:.1f} | {min(run['step_s']) * 1e3:.1f}-"
              f"{max(run['step_s']) * 1e3:.1f} | {1 / med:.1f} | {med / base:.2f}x | "
              f"{run['first_s']:.2f} |")


if __name__ == "__main__":
    main()
