"""Many small runs as one program (`run.train_many`) against the same runs one after another.

    python -m experiments.benchmarks.many [--repeats 3] [--epochs 40] [--width 512]
        [--checkpoints every_epoch|last]

Two groups of the README's digits MLP (experiments/configs/digits_mlp.py, 40 epochs, a
checkpoint and an evaluation every epoch): 5 seeds (0-4), and a 7-point learning-rate sweep
(1e-4 .. 1e-1, seed 0). Each group is trained both ways, interleaved `--repeats` times, each in
fresh work directories, in this one process after a warm-up run (so neither way pays JAX's
first-use costs):

- `sequential`: `run.train_and_evaluate` once per config, as a study does today;
- `vmapped`: `run.train_many(configs, workdirs)`: one compiled program for every run.

Timed: the whole call, setup to each run's test evaluation, checkpoints and plots included:
what a user waits for. One CPU device (the vmapped runs train on one; the sequential ones are
given `parallel.mesh=data=1` to match). Prints the median and min-max seconds of each way and
the ratio of the medians. `--checkpoints last` saves each run once, at its end, instead of
every epoch (still evaluated every epoch): how much of either way the checkpoints take.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

from experiments import run
from experiments.config import load_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "digits_mlp.py")
GROUPS = {"5 seeds": dict(seeds=[0, 1, 2, 3, 4]),
          "7 learning rates": dict(learning_rates=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])}


def configs_of(group: dict, epochs: int, width: int = 0, checkpoints: str = "every_epoch"):
    config = load_config(CONFIG)
    config.parallel.mesh = "data=1"
    config.epochs = epochs
    config.model.width = width or config.model.width
    if checkpoints == "last":  # an interval longer than the run: only its last step is saved
        config.checkpoint.every = 10 ** 9
    return list(run.variants(config, **group).values())


def sequential(configs, root: str) -> float:
    start = time.perf_counter()
    for i, c in enumerate(configs):
        run.train_and_evaluate(c, os.path.join(root, f"run_{i}"), console=False)
    return time.perf_counter() - start


def vmapped(configs, root: str) -> float:
    start = time.perf_counter()
    run.train_many(configs, [os.path.join(root, f"run_{i}") for i in range(len(configs))],
                   console=False)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--width", type=int, default=0,
                   help="the MLP's hidden width (default: the config's 512); narrower nets "
                        "have cheaper steps, so more of a run is the loop around them")
    p.add_argument("--checkpoints", default="every_epoch",
                   help="every_epoch (as the config saves) or last (once, at each run's end)")
    args = p.parse_args(argv)
    problems = []
    if args.repeats < 1:
        problems.append(f"--repeats must be >= 1, got {args.repeats}")
    if args.epochs < 1:
        problems.append(f"--epochs must be >= 1, got {args.epochs}")
    if args.width < 0:
        problems.append(f"--width must be >= 0 (0: the config's), got {args.width}")
    if args.checkpoints not in ("every_epoch", "last"):
        problems.append(f"--checkpoints must be every_epoch or last, got {args.checkpoints!r}")
    if problems:
        print(f"many: {problems[0]}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        warm = configs_of(GROUPS["5 seeds"], 1)[:2]
        sequential(warm, os.path.join(tmp, "warm_s"))
        vmapped(warm, os.path.join(tmp, "warm_v"))
        times = {(g, way): [] for g in GROUPS for way in ("sequential", "vmapped")}
        for r in range(args.repeats):
            for g, group in GROUPS.items():
                configs = configs_of(group, args.epochs, args.width, args.checkpoints)
                for way, fn in (("sequential", sequential), ("vmapped", vmapped)):
                    seconds = fn(configs, os.path.join(tmp, f"{r}-{g}-{way}"))
                    times[g, way].append(seconds)
                    print(f"repeat {r + 1}: {g}, {way}: {seconds:.1f} s", flush=True)
    saves = "every epoch" if args.checkpoints == "every_epoch" else "at each run's end only"
    print(f"\n{args.epochs} epochs, evaluated every epoch, checkpoints {saves}")
    print(f"\n| group | runs | sequential s (median, min-max) | vmapped s (median, min-max) "
          f"| speedup (median ratio) |\n|---|---|---|---|---|")
    for g, group in GROUPS.items():
        s, v = times[g, "sequential"], times[g, "vmapped"]
        runs = len(next(iter(group.values())))
        print(f"| {g} | {runs} | {statistics.median(s):.1f} ({min(s):.1f}-{max(s):.1f}) | "
              f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f}) | "
              f"{statistics.median(s) / statistics.median(v):.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
