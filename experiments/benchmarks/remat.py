"""What `model.remat` saves: the temporary memory XLA plans for a GPT's training step (the
gradient of its loss), from the compiled program's own memory analysis, per remat setting, with
the blocks in a Python loop and scanned (`model.scan_layers`).

    python -m experiments.benchmarks.remat [--layers 12] [--tokens 1024] [--batch 4]

The GPT is 6 heads, width 384, on 65 characters, with `--layers` blocks and `--tokens` of
context, dropout 0.1 in training mode. Each setting is compiled once on this machine's first
device; the numbers are XLA's plan for that device, not a timing, so one compile each is the
measurement.
"""
import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nets

SETTINGS = ("none", "block", "dots_with_no_batch_dims_saveable")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    if min(args.layers, args.tokens, args.batch) < 1:
        print(f"remat: --layers, --tokens and --batch must be >= 1, got {args.layers}, "
              f"{args.tokens} and {args.batch}", file=sys.stderr)
        return 2
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 65, (args.batch, args.tokens)),
                      jnp.int32)
    print(f"GPT {args.layers} layers x 384 wide, {args.batch} x {args.tokens} tokens, gradient "
          f"of the loss, {jax.devices()[0].device_kind}")
    print("| blocks | model.remat | temporaries (XLA's plan) | none's / this |")
    print("|---|---|---|---|")
    for scan in (False, True):
        plan(args, ids, scan)
    return 0


def plan(args, ids, scan: bool) -> None:
    planned = {}
    for remat in SETTINGS:
        model = nets.build("gpt", input_shape=(args.tokens,), num_classes=65,
                           layers=args.layers, heads=6, width=384, dropout=0.1, remat=remat,
                           scan_layers=scan)
        graphdef, params = nnx.split(model)

        def loss(params, ids):
            logits = nnx.merge(graphdef, params)(ids, train=True, rngs=jax.random.PRNGKey(0))
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                                   ids[:, 1:]).mean()

        compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
        planned[remat] = compiled.memory_analysis().temp_size_in_bytes
        ratio = planned["none"] / planned[remat]
        print(f"| {'scan' if scan else 'loop'} | {remat} | {planned[remat] / 2**20:,.0f} MiB | "
              f"{'-' if remat == 'none' else f'{ratio:.2f}x'} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
