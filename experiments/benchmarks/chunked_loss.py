"""What `loss.chunk` saves: the temporary memory XLA plans for a GPT's training gradient with
its float32 logits made for the whole sequence at once, and a chunk of positions at a time.

    python -m experiments.benchmarks.chunked_loss [--batch 16] [--tokens 1024] [--chunks 0,128]

The GPT is GPT-2 small's shape (12 layers, 12 heads, width 768, GPT-2's 50,257 tokens), dropout
0.1 in training mode, its loss descent's training objective (train/step.py). Each setting is
compiled once on this machine's first device; the numbers are XLA's plan for that device, not a
timing, so one compile each is the measurement.
"""
import argparse
import sys

import jax
import jax.numpy as jnp
from flax import nnx

import nets
from train.losses import make_task
from train.step import make_loss_fn

VOCAB = 50257


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--chunks", default="0,128")
    args = parser.parse_args(argv)
    try:
        chunks = [int(c) for c in args.chunks.split(",")]
    except ValueError:
        chunks = [-1]
    if min(args.batch, args.tokens, args.layers) < 1 or min(chunks) < 0 \
            or any(c and args.tokens % c for c in chunks):
        print(f"chunked_loss: --batch, --tokens and --layers must be >= 1 and --chunks "
              f"divisors of --tokens (0: all at once); got {args.batch}, {args.tokens}, "
              f"{args.layers} and {args.chunks!r}", file=sys.stderr)
        return 2
    model = nets.build("gpt", input_shape=(args.tokens,), num_classes=VOCAB, layers=args.layers)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {k: jax.ShapeDtypeStruct((args.batch, args.tokens), jnp.int32)
             for k in ("inputs", "targets")}
    logits = args.batch * args.tokens * VOCAB * 4
    print(f"GPT {args.layers} layers x 768 wide, {VOCAB:,} tokens, {args.batch} x {args.tokens} "
          f"positions (their float32 logits: {logits / 1e9:.2f} GB), gradient of the loss, "
          f"{jax.devices()[0].device_kind}")
    print("| loss.chunk | temporaries (XLA's plan) | all at once / this |")
    print("|---|---|---|")
    planned = {}
    for chunk in chunks:
        loss_of = make_loss_fn(graphdef, make_task("classification", "cross_entropy",
                                                   chunk=chunk))
        grad = jax.jit(jax.grad(lambda p, b: loss_of(p, rest, b, jax.random.key(0))[0]))
        planned[chunk] = grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
        ratio = planned[chunks[0]] / planned[chunk]
        print(f"| {chunk or 'all at once'} | {planned[chunk] / 1e9:.2f} GB | "
              f"{'-' if chunk == chunks[0] else f'{ratio:.2f}x'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
