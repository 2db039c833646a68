"""What `model.scan_layers` does to compile time: the training gradient of a GPT of 12 and of
48 layers compiled with its blocks in a Python loop (each block compiled on its own) and as
one `lax.scan` over stacked blocks (one block compiled for all).

    python -m experiments.benchmarks.scan_layers [--repeats 7] [--depths 12,48]

The GPT is 4 heads, width 256, on 65 characters, 4 x 256 tokens, dropout 0.1 in training mode,
on this machine's first device. Each repeat builds every model afresh and times tracing,
lowering and XLA's compile of `jax.grad` of its loss (no compilation cache), the arms
interleaved; medians, min-max, and scan's median over the loop's.
"""
import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nets


def compile_seconds(layers: int, scan: bool, ids) -> float:
    model = nets.build("gpt", input_shape=(ids.shape[1],), num_classes=65, layers=layers,
                       heads=4, width=256, dropout=0.1, scan_layers=scan)
    graphdef, params = nnx.split(model)

    def loss(params, ids):
        logits = nnx.merge(graphdef, params)(ids, train=True, rngs=jax.random.key(0))
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                               ids[:, 1:]).mean()

    start = time.perf_counter()
    jax.jit(jax.grad(loss)).lower(params, ids).compile()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--depths", default="12,48")
    args = parser.parse_args(argv)
    try:
        depths = [int(d) for d in args.depths.split(",")]
    except ValueError:
        depths = []
    if args.repeats < 1 or not depths or min(depths) < 1:
        print(f"scan_layers: --repeats must be >= 1 and --depths positive integers such as "
              f"12,48; got {args.repeats} and {args.depths!r}", file=sys.stderr)
        return 2
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 65, (4, 256)), jnp.int32)
    arms = [(layers, scan) for layers in depths for scan in (False, True)]
    times = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm in arms:
            times[arm].append(compile_seconds(*arm, ids))
    print(f"GPT, 4 heads x 256 wide, gradient of the loss on 4 x 256 tokens, "
          f"{jax.devices()[0].device_kind}; {args.repeats} repeats, interleaved")
    print("| layers | blocks | compile time, median | min-max | scan / loop |")
    print("|---|---|---|---|---|")
    for layers, scan in arms:
        t = times[(layers, scan)]
        ratio = statistics.median(t) / statistics.median(times[(layers, False)])
        print(f"| {layers} | {'scan' if scan else 'loop'} | {statistics.median(t):.2f} s | "
              f"{min(t):.2f}-{max(t):.2f} s | {f'{ratio:.2f}' if scan else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
