"""The MNIST CNN's train step with XLA's convolutions against im2col (nets/conv.py), on CPU.

    python -m experiments.benchmarks.conv [--repeats 7] [--steps 20] [--flags]
        [--torch build/torchvenv/bin/python]

The step: nets.build("cnn") (conv32-pool-conv64-pool-dense128, 3x3 SAME), batch 128 of
28x28x1, softmax cross-entropy, Adam, `jax.jit` with the state donated, one CPU device,
synthetic batches already on the device. Each repetition times `--steps` steps of each
conv_impl in turn (interleaved, after a compiled warm-up), and the table gives ms/step median
[min-max] and the ratio to `xla`. `--flags` also times `xla` under each XLA CPU flag in
FLAG_RUNS (XLA reads its flags once per process) and `--torch PY` the same step in PyTorch
eager with the interpreter PY (a venv with torch installed); with either, every run and
repetition is a process of its own, taken round-robin, so that the shared machine's load
drifts over all of them alike.

Measured 2026-12-04 on the shared 2-core Xeon (load average 3-7 from other work, so every
number is ~2x a quiet machine's; ratios are what carry), `--repeats 7 --steps 10 --flags
--torch build/torchvenv/bin/python`, ms/step median [min-max], / xla:
xla 132.6 [113.6-256.5] 1.00; im2col 160.2 [148.4-202.5] 1.21; xla with
xnn/onednn/ynn individual_convolution 1.08 / 0.95 / 0.94 (noise); PyTorch 2.13 eager
423.2 [92.6-513.1] (its thread pool suffers most from the load; its best run is the fastest).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FLAG_RUNS = {
    "xnn individual_convolution": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "onednn individual_convolution":
        "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "ynn individual_convolution": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
}

TORCH_STEP = r"""
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
steps, repeats = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                    nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step():
    opt.zero_grad(); loss = F.cross_entropy(net(x), y); loss.backward(); opt.step()
for _ in range(3): step()
for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps): step()
    print((time.perf_counter() - start) / steps * 1e3, flush=True)
"""


def make_step(conv_impl: str):
    """A jitted, donating CNN train step and its initial (state, batch) on one CPU device."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    import nets

    model = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, conv_impl=conv_impl)
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-3)

    def loss_fn(params, batch):
        logits = nnx.merge(graphdef, params)(batch["inputs"], train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    step = jax.jit(step, donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = {"inputs": jax.device_put(rng.normal(size=(128, 28, 28, 1)).astype(np.float32)),
             "targets": jax.device_put(rng.integers(0, 10, 128).astype(np.int32))}
    return step, (params, tx.init(params)), batch


def time_steps(runner, steps: int) -> float:
    """ms per step of `steps` steps of `runner = [step, state, batch]` (state carried on)."""
    step, state, batch = runner
    start = time.perf_counter()
    for _ in range(steps):
        state, loss = step(state, batch)
    loss.block_until_ready()
    runner[1] = state
    return (time.perf_counter() - start) / steps * 1e3


def interleaved(impls, repeats: int, steps: int) -> dict[str, list[float]]:
    runners = {}
    for impl in impls:
        runners[impl] = list(make_step(impl))
        time_steps(runners[impl], 3)  # compile and warm up
    times = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            times[impl].append(time_steps(runners[impl], steps))
    return times


def in_subprocess(args: list[str], env_flags: str = "") -> dict[str, list[float]]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + env_flags).strip())
    out = subprocess.run([sys.executable, "-m", "experiments.benchmarks.conv", "--json", *args],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name: str, ms: list[float], base: float | None) -> str:
    median = statistics.median(ms)
    ratio = f"{median / base:.2f}" if base else "1.00"
    return f"| {name} | {median:.1f} [{min(ms):.1f}-{max(ms):.1f}] | {ratio} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--impls", default="xla,im2col")
    parser.add_argument("--flags", action="store_true", help="also time xla under FLAG_RUNS")
    parser.add_argument("--torch", default="", help="a python with torch: time PyTorch eager")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    impls = args.impls.split(",")
    if args.json:
        print(json.dumps(interleaved(impls, args.repeats, args.steps)))
        return
    runs = {impl: ("jax", impl, "") for impl in impls}
    if args.flags:
        runs.update({f"xla, {name}": ("jax", "xla", flag) for name, flag in FLAG_RUNS.items()})
    if args.torch:
        runs["pytorch eager"] = ("torch", "", "")
    times = {name: [] for name in runs}
    if len(runs) == len(impls):  # one process, the implementations interleaved step blocks
        times = in_subprocess(["--repeats", str(args.repeats), "--steps", str(args.steps),
                               "--impls", ",".join(impls)])
    else:  # a process per run and repetition, round-robin, so load drifts hit all alike
        for _ in range(args.repeats):
            for name, (kind, impl, flags) in runs.items():
                if kind == "torch":
                    out = subprocess.run([args.torch, "-c", TORCH_STEP, str(args.steps), "1"],
                                         capture_output=True, text=True, check=True)
                    times[name].append(float(out.stdout.split()[-1]))
                else:
                    times[name] += in_subprocess(["--repeats", "1", "--steps", str(args.steps),
                                                  "--impls", impl], flags)[impl]
    base = statistics.median(times["xla"]) if "xla" in times else None
    print(f"MNIST CNN train step, batch 128, Adam, one CPU device ({os.cpu_count()} cores), "
          f"{args.repeats} x {args.steps} steps")
    print("| conv | ms/step median [min-max] | / xla |\n|---|---|---|")
    for name, ms in times.items():
        print(row(name, ms, base))


if __name__ == "__main__":
    main()
