"""The MNIST CNN's train step with XLA's convolutions against im2col (nets/conv.py), on CPU.

    python -m experiments.benchmarks.conv [--repeats 7] [--steps 20] [--flags]
        [--torch build/torchvenv/bin/python] [--layouts]

The step: nets.build("cnn") (conv32-pool-conv64-pool-dense128, 3x3 SAME), batch 128 of
28x28x1, softmax cross-entropy, Adam, `jax.jit` with the state donated, one CPU device,
synthetic batches already on the device. Each repetition times `--steps` steps of each
conv_impl in turn (interleaved, after a compiled warm-up), and the table gives ms/step median
[min-max] and the ratio to `xla`. `--flags` also times `xla` under each XLA CPU flag in
FLAG_RUNS (XLA reads its flags once per process) and `--torch PY` the same step in PyTorch
eager with the interpreter PY (a venv with torch installed); with either, every run and
repetition is a process of its own, taken round-robin, so that the shared machine's load
drifts over all of them alike. `--layouts` times, instead, the CNN's two convolutions, ReLUs
and pools alone, forward and backward, channels-last (NHWC, as descent computes them) against
channels-first (NCHW), interleaved in one process, and checks that both give the same gradient.

Measured 2026-12-04 on the 2-core development machine with nothing else running, `--repeats 7
--steps 10 --flags --torch build/torchvenv/bin/python`: xla 92.0 ms/step [80.9-105.1]; im2col
0.98x; every flag in FLAG_RUNS 0.96-1.10x (noise); PyTorch 2.13 eager 0.65x. docs/performance.md,
"Convolutions on CPU", has the table, and a loaded run beside it.
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
    "thunk runtime off": "--xla_cpu_use_thunk_runtime=false",
    "Eigen single-threaded": "--xla_cpu_multi_thread_eigen=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
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


def layout_grad(layout: str):
    """The CNN's convolutions, ReLUs and 2x2 max-pools in `layout` (nhwc or nchw), summed
    squared: a jitted value-and-gradient function and its (kernels, input), made from the same
    numbers for either layout."""
    import jax
    import numpy as np

    first = layout == "nhwc"
    numbers = ("NHWC", "HWIO", "NHWC") if first else ("NCHW", "OIHW", "NCHW")

    def f(kernels, x):
        for kernel in kernels:
            x = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                         dimension_numbers=numbers))
            shape = x.shape
            if first:
                x = x.reshape(shape[0], shape[1] // 2, 2, shape[2] // 2, 2, shape[3])
            else:
                x = x.reshape(shape[0], shape[1], shape[2] // 2, 2, shape[3] // 2, 2)
            x = x.max(axis=(2, 4) if first else (3, 5))
        return (x ** 2).sum()

    rng = np.random.default_rng(0)
    kernels = [rng.normal(size=(3, 3, 1, 32)).astype(np.float32) * 0.3,
               rng.normal(size=(3, 3, 32, 64)).astype(np.float32) * 0.1]
    x = rng.random((128, 28, 28, 1), dtype=np.float32)
    if not first:
        kernels, x = [k.transpose(3, 2, 0, 1) for k in kernels], x.transpose(0, 3, 1, 2)
    return jax.jit(jax.value_and_grad(f)), (kernels, x)


def time_layouts(repeats: int, steps: int) -> tuple[dict[str, list[float]], float]:
    """ms per forward and backward pass of each layout, interleaved, and the largest
    difference between their gradients (in NHWC's order)."""
    import jax
    import numpy as np

    runs = {layout: layout_grad(layout) for layout in ("nhwc", "nchw")}
    grads = {layout: f(*args)[1] for layout, (f, args) in runs.items()}
    difference = max(float(np.abs(np.asarray(a) - np.asarray(b).transpose(2, 3, 1, 0)).max())
                     for a, b in zip(grads["nhwc"], grads["nchw"]))
    times = {layout: [] for layout in runs}
    for _ in range(repeats):
        for layout, (f, args) in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = f(*args)
            jax.block_until_ready(out)
            times[layout].append((time.perf_counter() - start) / steps * 1e3)
    return times, difference


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
    parser.add_argument("--layouts", action="store_true",
                        help="time channels-last against channels-first convolutions instead")
    args = parser.parse_args(argv)
    if args.layouts:
        times, difference = time_layouts(args.repeats, args.steps)
        print(f"the CNN's convolutions, ReLUs and pools, forward and backward, batch 128, one "
              f"CPU device, {args.repeats} x {args.steps} passes; largest gradient difference "
              f"{difference:.3g}")
        print("| layout | ms/pass median [min-max] | / nhwc |\n|---|---|---|")
        for name, ms in times.items():
            print(row(name, ms, statistics.median(times["nhwc"]) if name != "nhwc" else None))
        paired = sorted(a / b for a, b in zip(times["nchw"], times["nhwc"]))
        print(f"paired nchw / nhwc: {paired[0]:.2f}-{paired[-1]:.2f}")
        return
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
