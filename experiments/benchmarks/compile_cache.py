"""How much of a run's compile time JAX's persistent compilation cache saves: the same training
command twice in fresh processes, the first with an empty cache, the second reading it.

    python -m experiments.benchmarks.compile_cache [--repeats 7]

The command trains a 12-layer BERT-style encoder on scikit-learn's digits read row by row for 5
steps, on one CPU device; its compile time is the run's own `compile_s` record (the training
step's first compile). Each repeat uses a fresh cache folder: a cold run, then a warm one.
Medians, min-max and the ratio of the medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

COMMAND = ["train", "--config", "experiments/configs/digits_mlp.py", "--config.model.name=bert",
           "--config.model.layers=12", "--config.steps=5"]


def compile_seconds(workdir: str, cache: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    subprocess.run([sys.executable, "-m", "experiments", *COMMAND, "--workdir", workdir,
                    f"--config.compile_cache={cache}"], check=True, capture_output=True,
                   env=env)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return next(r["compile_s"] for r in map(json.loads, f) if "compile_s" in r)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print(f"compile_cache: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    times = {"empty cache": [], "second run": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            for i, arm in enumerate(times):
                times[arm].append(compile_seconds(f"{root}/run{i}", f"{root}/cache"))
    print(f"descent {' '.join(COMMAND)}; {args.repeats} pairs of fresh processes")
    print("| cache | compile time of the train step, median | min-max |")
    print("|---|---|---|")
    for arm, seconds in times.items():
        print(f"| {arm} | {statistics.median(seconds):.2f} s | {min(seconds):.2f}-"
              f"{max(seconds):.2f} s |")
    ratio = statistics.median(times["second run"]) / statistics.median(times["empty cache"])
    print(f"second run / first: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
