"""What the full training loop costs over a hand-written one, per epoch.

    python -m experiments.benchmarks.loop_overhead [--repeats 7] [--nets digits_mlp,mnist_cnn]
        [--data-dir ~/tensorflow_datasets]

For each net, two ways to train the same model on the same batches with the same optimizer,
interleaved `--repeats` times, each in a fresh work directory:

- `fit`: `train.loop.fit` as a user runs it (the training split kept on the device, as it is
  by default for data held in memory; `fit, host batches` sends every batch from the host): records every `log_every` steps with every field
  (loss, accuracy, objective, learning rate, norms, throughput), metrics.jsonl, TensorBoard,
  the progress bar, the lock; evaluation and checkpoints only after the timed steps.
- `bare`: `jax.jit` of value_and_grad + optax update + apply_updates, batches `jax.device_put`
  one by one, nothing else; and `bare + norms`, the same step also returning the gradient's and
  the parameters' global norms, which fit's step computes at every step: the two apart show
  what the norms cost and what the rest of the loop costs.

Timed: from the end of step 1 (compiled, its one-off costs paid) to the end of the last step
before the final evaluation, reported per epoch of `steps_per_epoch` steps. One CPU device;
the ratio is what carries over, not the seconds. MNIST needs preparing first (`descent data
prepare mnist`); without it that net is skipped with the reason.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import optax
from flax import nnx

from experiments import run
from experiments.config import load_config
from train.loop import fit

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def setup(name: str, data_dir: str, epochs: int):
    config = load_config(os.path.join(CONFIGS, f"{name}.py"))
    config.parallel.mesh = "data=1"
    config.dataset.data_dir = data_dir
    model, dataset = run.build(config)
    steps_per_epoch = dataset.steps_per_epoch(config.dataset.batch_size)
    # timed steps 2 .. `timed_end`, a logging point before the final step and its evaluation
    config.steps = epochs * steps_per_epoch + 1
    config.eval_every = config.checkpoint.every = config.steps
    timed_end = (config.steps - 1) // config.log_every * config.log_every
    return config, dataset, steps_per_epoch, timed_end


def time_fit(config, dataset, timed_end: int, on_device: bool = True) -> float:
    """Seconds per step of fit between the records of step 1 and `timed_end`; with
    `on_device` (the default) the training split is kept on the device, else every batch is
    sent from the host."""
    at = {}
    config = config.copy_and_resolve_references()
    config.dataset.on_device = on_device

    def clock(record):
        if "train_loss" in record:
            at[record["step"]] = time.perf_counter()

    model, _ = run.build(config)
    with tempfile.TemporaryDirectory() as workdir:
        fit(config, workdir, model, dataset, writers=[clock])
    return (at[timed_end] - at[1]) / (timed_end - 1)


def time_bare(config, dataset, timed_end: int, norms: bool = False) -> float:
    """Seconds per step of a hand-written jit + optax loop over the same model and batches
    (with `norms`, its step also returns the global norms of the gradient and parameters)."""
    from train.trainer import Trainer

    model, _ = run.build(config)
    trainer = Trainer(config, model, dataset)  # the same optax chain
    graphdef, tx, loss = trainer.graphdef, trainer.tx, trainer.task.loss
    params, rest = trainer.initial_state.params, trainer.initial_state.model_state
    key = jax.random.PRNGKey(config.seed)

    def step(params, opt_state, step, inputs, targets):
        def loss_of(p):
            model = nnx.merge(graphdef, p, rest, copy=True)
            return loss(model(inputs, train=True, rngs=jax.random.fold_in(key, step)),
                        targets).mean()
        value, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if norms:
            value = (value, optax.tree.norm(grads), optax.tree.norm(params))
        return params, opt_state, value

    step = jax.jit(step, donate_argnums=(0, 1))
    params, opt_state = jax.tree.map(np.copy, jax.device_get((params, tx.init(params))))
    done, start = 0, None
    for epoch in range(timed_end // trainer.steps_per_epoch + 1):
        for batch in dataset.train_batches(config.dataset.batch_size, seed=config.seed,
                                           epoch=epoch):
            batch = jax.device_put(batch)
            params, opt_state, value = step(params, opt_state, done, batch["inputs"],
                                            batch["targets"])
            done += 1
            if done == 1:
                jax.block_until_ready(value)
                start = time.perf_counter()
            if done == timed_end:
                jax.block_until_ready(params)
                return (time.perf_counter() - start) / (timed_end - 1)
    raise AssertionError("unreachable: timed_end is within the epochs run")


VARIANTS = {"bare": time_bare, "bare + norms": lambda *a: time_bare(*a, norms=True),
            "fit": time_fit, "fit, host batches": lambda *a: time_fit(*a, on_device=False)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--nets", default="digits_mlp,mnist_cnn")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs per timing (default: 40 for digits, its whole run; 1 "
                             "for MNIST)")
    args = parser.parse_args(argv)
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}, {args.repeats} interleaved "
          f"repeats; seconds per epoch, median [min-max]")
    rows = []
    for name in args.nets.split(","):
        epochs = args.epochs or (40 if name.startswith("digits") else 1)
        try:
            config, dataset, steps_per_epoch, timed_end = setup(name, args.data_dir, epochs)
        except (ValueError, OSError) as e:
            print(f"{name}: skipped ({e})", file=sys.stderr)
            continue
        times = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant, timer in VARIANTS.items():
                times[variant].append(timer(config, dataset, timed_end) * steps_per_epoch)
        bare, full = (statistics.median(times[v]) for v in ("bare", "fit"))
        ratios = sorted(f / b for f, b in zip(times["fit"], times["bare"]))
        rows.append((name, steps_per_epoch, config.dataset.batch_size, times, full / bare,
                     ratios))
        with_norms = statistics.median(times["bare + norms"]) / bare
        print(f"{name} ({steps_per_epoch} steps of {config.dataset.batch_size}): "
              + ", ".join(f"{v} {_cell(times[v])}" for v in VARIANTS)
              + f"; fit / bare {full / bare:.3f}x (paired {ratios[0]:.3f}-{ratios[-1]:.3f}), "
              f"bare + norms / bare {with_norms:.3f}x", flush=True)
    print("\n| net | steps/epoch x batch | " + " | ".join(f"{v}, s/epoch" for v in VARIANTS)
          + " | fit / bare | (bare + norms) / bare | (fit, host batches) / bare |")
    print("|---|---|" + "---|" * (len(VARIANTS) + 3))
    for name, steps, batch, times, ratio, ratios in rows:
        bare = statistics.median(times["bare"])
        norms = statistics.median(times["bare + norms"]) / bare
        host = statistics.median(times["fit, host batches"]) / bare
        print(f"| {name} | {steps} x {batch} | " + " | ".join(_cell(times[v]) for v in VARIANTS)
              + f" | {ratio:.3f}x (pairs {ratios[0]:.2f}-{ratios[-1]:.2f}) | {norms:.3f}x | "
              f"{host:.3f}x |")
    return 0


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


if __name__ == "__main__":
    sys.exit(main())
