"""Tokens per second of `descent sample`'s GPT with its KV cache against reading the whole window
for every token, at two context lengths.

    python -m experiments.benchmarks.sampling [--repeats 7] [--tokens 64]

The GPT is the Tiny Shakespeare config's shape (6 layers, 6 heads, width 384, 65 characters)
with random weights, at contexts of 256 and 1,024 positions. Each timing draws `--tokens`
characters after a one-character prompt, greedily, in one process on one device, every
program compiled before timing; the two ways alternate, `--repeats` times each. Medians,
min-max and the median ratio per context.
"""
import argparse
import statistics
import sys
import time

import jax
import numpy as np

import nets
from train.sampling import generate

CONTEXTS = (256, 1024)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.repeats < 1 or not 1 <= args.tokens < min(CONTEXTS):
        print(f"sampling: --repeats must be >= 1 and --tokens from 1 to {min(CONTEXTS) - 1}, "
              f"got {args.repeats} and {args.tokens}", file=sys.stderr)
        return 2
    print(f"GPT 6 layers x 384 wide, {args.tokens} tokens after a 1-token prompt, greedy, "
          f"{jax.devices()[0].device_kind}; {args.repeats} timings each, alternating")
    print("| context | KV cache, tokens/s (min-max) | whole window, tokens/s (min-max) | ratio |")
    print("|---|---|---|---|")
    for context in CONTEXTS:
        model = nets.build("gpt", input_shape=(context,), num_classes=65, layers=6, heads=6,
                           width=384, dropout=0.0)
        rates = {True: [], False: []}
        for repeat in range(args.repeats + 1):  # the first round compiles: not kept
            for cache in (True, False) if repeat % 2 else (False, True):
                start = time.perf_counter()
                generate(model, [np.zeros(1, np.int32)], args.tokens, context, temperature=0.0,
                         key=jax.random.PRNGKey(0), cache=cache)
                if repeat:
                    rates[cache].append(args.tokens / (time.perf_counter() - start))
        shown = {c: f"{statistics.median(r):,.0f} ({min(r):,.0f}-{max(r):,.0f})"
                 for c, r in rates.items()}
        ratio = statistics.median(rates[True]) / statistics.median(rates[False])
        print(f"| {context:,} | {shown[True]} | {shown[False]} | {ratio:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
