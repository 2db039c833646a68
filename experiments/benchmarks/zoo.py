"""Training-step time, FLOPs per example and achieved FLOP/s of every net in the zoo.

    python -m experiments.benchmarks.zoo                      # every net at its CPU batch
    python -m experiments.benchmarks.zoo --nets resnet50 gpt  # some of them
    python -m experiments.benchmarks.zoo --accelerator        # ResNet-50 bf16 batch 256 and
                                                              # GPT-2 small, with MFU

A step is the whole compiled `train_step`: forward, backward and the AdamW update, on one
device. FLOPs come from XLA's cost analysis of that step as traced, before the backend
rewrites it (the backward pass and optimizer included; on a GPU the compiled program's
convolutions are cuDNN calls that XLA's count of it leaves out). Timings are medians of
`--repeats` steps after one warm-up (compile) step; min and max are printed beside them.
With `--accelerator`, utilisation is FLOP/s over the device's peak dense bfloat16 FLOP/s: for
the GPT the model FLOPs (MFU: 6 per parameter per token plus attention, PaLM's accounting);
for the ResNet XLA's count of the whole step (hardware FLOP utilisation, HFU).
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nets
from train.losses import make_task
from train.state import create_state
from train.step import make_train_step

# name: (batch, fields) on a CPU: big enough to keep the cores busy, small enough to finish
CPU_CASES = {
    "mlp": (128, {}),
    "cnn": (128, {}),
    "resnet18": (8, {}),
    "resnet34": (8, {}),
    "resnet50": (8, {}),
    "resnet101": (4, {}),
    "resnet152": (4, {}),
    "gpt": (1, {}),  # GPT-2 small, 1,024 tokens
    "bert": (128, {}),
    "lstm": (32, {}),
    "gru": (32, {}),
    "rnn": (32, {}),
}
ACCELERATOR_CASES = {
    "resnet50": (256, {"dtype": "bfloat16"}),
    "gpt": (16, {"dtype": "bfloat16", "dropout": 0.0}),
}
# Peak dense bfloat16 FLOP/s by `device_kind` (vendor data sheets, without sparsity)
PEAK_BF16 = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
}


def compiled_step(name: str, batch: int, fields: dict):
    net = nets.NETS[name]
    model = nets.build(name, input_shape=net.input_shape, num_classes=net.num_classes, **fields)
    tx = optax.adamw(1e-4)
    graphdef, state = create_state(model, tx, seed=0)
    step = jax.jit(make_train_step(graphdef, make_task("classification", "cross_entropy"), tx),
                   donate_argnums=0)
    rng = np.random.default_rng(0)
    if len(net.input_shape) == 1:  # token ids, next-token targets at every position
        inputs = rng.integers(0, net.num_classes, (batch, *net.input_shape)).astype(np.int32)
        targets = rng.integers(0, net.num_classes, inputs.shape).astype(np.int32)
    else:
        inputs = rng.normal(size=(batch, *net.input_shape)).astype(np.float32)
        targets = rng.integers(0, net.num_classes, batch).astype(np.int32)
    batch_arrays = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
    lowered = step.lower(state, batch_arrays)
    compiled = lowered.compile()
    # counted before the backend rewrites the program: on a GPU the compiled program's
    # convolutions are cuDNN calls that XLA's count leaves out (ResNet-50: 0.41 of 24 GFLOP)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compiled, state, batch_arrays, float(cost.get("flops", float("nan")))


def gpt_model_flops_per_token(fields: dict) -> float:
    """6 N (forward and backward through every weight) + 12 L D T (attention scores), for the
    GPT's default shape and `fields` (PaLM's MFU accounting, appendix B)."""
    f = {**nets.fields("gpt"), **fields}
    n = nets.count_params("gpt", **fields)
    context = f["context"] or nets.NETS["gpt"].input_shape[0]
    return 6 * n + 12 * f["layers"] * f["width"] * context


def measure(name, batch, fields, repeats):
    compiled, state, batch_arrays, flops = compiled_step(name, batch, fields)
    state, metrics = compiled(state, batch_arrays)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, batch_arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return flops, times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="*", help="default: every net")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--accelerator", action="store_true",
                        help="the accelerator cases (bf16; ResNet-50 at batch 256, GPT-2 small)")
    args = parser.parse_args()
    cases = ACCELERATOR_CASES if args.accelerator else CPU_CASES
    names = args.nets or list(cases)
    unknown = sorted(set(names) - set(cases))
    if unknown:
        parser.error(f"no {'accelerator ' if args.accelerator else ''}case for "
                     f"{', '.join(unknown)}; known: {', '.join(cases)}")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}); {args.repeats} timed steps each")
    print(f"{'net':<10} {'batch':>5} {'params':>12} {'step ms (min-max)':>22} "
          f"{'GFLOP/example':>13} {'GFLOP/s':>8}  examples/s")
    for name in names:
        batch, fields = cases[name]
        flops, times = measure(name, batch, fields, args.repeats)
        median = statistics.median(times)
        length = nets.NETS[name].input_shape[0] if len(nets.NETS[name].input_shape) == 1 else 1
        timing = f"{median * 1e3:.1f} ({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f})"
        print(f"{name:<10} {batch:>5} {nets.count_params(name, **fields):>12,} {timing:>22} "
              f"{flops / batch / 1e9:>13.4g} {flops / median / 1e9:>8.1f}  "
              f"{batch / median:,.1f}" + (f" ({batch * length / median:,.0f} tokens/s)"
                                          if length > 1 else ""), flush=True)
        peak = PEAK_BF16.get(device.device_kind)
        if args.accelerator and peak:
            if name == "gpt":
                what, used = "MFU", gpt_model_flops_per_token(fields) * batch * length
            else:
                what, used = "HFU", flops
            print(f"{'':<10} {what} {used / median / peak:.1%} of {peak / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
