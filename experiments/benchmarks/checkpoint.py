"""How long a checkpoint save blocks training, async vs sync, for a ResNet-50-sized state.

    python -m experiments.benchmarks.checkpoint [--repeats 7] [--dir /tmp/descent-ckpt-bench]

The state is 25.6M random float32 parameters in ResNet-50-like shapes plus Adam's two moment
trees (what a real train state holds), saved through `train.checkpoint` exactly as the training
loop does. Async and sync saves alternate, `--repeats` times each; medians and min-max.
"""
import argparse
import os
import shutil
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from train import checkpoint
from train.state import TrainState


def resnet50_sized_params(rng) -> dict:
    """25.6M parameters: 4 stages of bottleneck-like kernels, a 2048x1000 head, norm scales."""
    params, stage_widths, blocks = {}, (256, 512, 1024, 2048), (3, 4, 6, 3)
    inner = 64
    for s, (width, count) in enumerate(zip(stage_widths, blocks)):
        for b in range(count):
            cin = width if b else width // (2 if s else 4)
            params[f"stage{s}_block{b}"] = {
                "conv1": rng.standard_normal((1, 1, cin, inner), np.float32),
                "conv2": rng.standard_normal((3, 3, inner, inner), np.float32),
                "conv3": rng.standard_normal((1, 1, inner, width), np.float32),
                "norm_scale": np.ones((width,), np.float32)}
            if b == 0:  # the projection shortcut
                params[f"stage{s}_block{b}"]["shortcut"] = rng.standard_normal(
                    (1, 1, cin, width), np.float32)
        inner *= 2
    params["stem"] = rng.standard_normal((7, 7, 3, 64), np.float32)
    params["head"] = {"kernel": rng.standard_normal((2048, 1000), np.float32),
                      "bias": np.zeros((1000,), np.float32)}
    return jax.tree.map(jnp.asarray, params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default="/tmp/descent-checkpoint-benchmark")
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)

    params = resnet50_sized_params(np.random.default_rng(0))
    count = sum(x.size for x in jax.tree.leaves(params))
    tx = optax.adam(1e-3)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       model_state={}, rng=jax.random.PRNGKey(0))
    # Trained moments are not zeros, and zeros would compress to nothing on disk.
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(state))))
    state = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    jax.block_until_ready(state)

    shutil.rmtree(args.dir, ignore_errors=True)
    checkpoints = checkpoint.Checkpoints(args.dir, keep=2, keep_best=0)
    manager = checkpoints.manager
    blocked, sync, restore, unverified, verify_alone = [], [], [], [], []
    step = 0
    for _ in range(args.repeats):
        step += 1  # a save the loop made earlier, written, sealed and committed by now
        checkpoints.save(step, state, {}, {"epoch": 0, "batch": step})
        manager.wait_until_finished()
        step += 1  # async: the loop is blocked while save() copies the state off the devices
        start = time.perf_counter()  # (its write and checksums then run in orbax's thread)
        checkpoints.save(step, state, {}, {"epoch": 0, "batch": step})
        blocked.append(time.perf_counter() - start)
        checkpoints.wait()

        step += 1  # sync: save and wait for it to be on disk
        start = time.perf_counter()
        checkpoints.save(step, state, {}, {"epoch": 0, "batch": step})
        checkpoints.wait()
        sync.append(time.perf_counter() - start)

        pair = ((False, unverified), (True, restore))
        for verify, times in pair if step % 4 else pair[::-1]:  # interleaved, order alternating
            start = time.perf_counter()
            restored = checkpoint.restore(manager, step, state, verify=verify)
            jax.block_until_ready(restored)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoint.verify_checksums(manager, step)
        verify_alone.append(time.perf_counter() - start)

    path = os.path.join(args.dir, "checkpoints", str(step))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    mb = size / 1e6
    med = statistics.median
    print(f"state: {count / 1e6:.1f}M parameters + Adam moments, {mb:.0f} MB on disk; "
          f"{jax.devices()[0].platform}, jax {jax.__version__}; {args.repeats} repeats, "
          f"async and sync alternating; directory {args.dir}")
    print("| measure | median | min-max |")
    print("|---|---|---|")
    print(f"| training blocked by an async save | "
          f"{med(blocked) * 1e3:.0f} ms | "
          f"{min(blocked) * 1e3:.0f}-{max(blocked) * 1e3:.0f} ms |")
    print(f"| synchronous save (checksums included) | {med(sync) * 1e3:.0f} ms | "
          f"{min(sync) * 1e3:.0f}-{max(sync) * 1e3:.0f} ms |")
    print(f"| blocked / synchronous | {med(blocked) / med(sync):.1%} | |")
    print(f"| save throughput (sync) | {mb / med(sync):.0f} MB/s | |")
    print(f"| restore | {med(restore) * 1e3:.0f} ms ({mb / med(restore):.0f} MB/s) | "
          f"{min(restore) * 1e3:.0f}-{max(restore) * 1e3:.0f} ms |")
    print(f"| restore without the checksum check | {med(unverified) * 1e3:.0f} ms | "
          f"{min(unverified) * 1e3:.0f}-{max(unverified) * 1e3:.0f} ms |")
    print(f"| the checksum check's cost (restore / without, median) | "
          f"{med(restore) / med(unverified) - 1:+.1%} | |")
    print(f"| checking the checksums alone | {med(verify_alone) * 1e3:.0f} ms | "
          f"{min(verify_alone) * 1e3:.0f}-{max(verify_alone) * 1e3:.0f} ms |")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
