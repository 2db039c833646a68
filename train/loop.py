"""The training loop: one function that reads top to bottom.

It receives a model and a dataset and knows neither's kind: the dataset needs
`steps_per_epoch(batch_size)`, `train_batches(batch_size, seed=, epoch=, process_index=,
process_count=)` and `eval_batches(split, batch_size, process_index=, process_count=)`.
"""
import itertools
import math
import os
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from train import checkpoint, report
from train.state import num_params
from train.trainer import Trainer, total_steps


MONITORED = ("eval_accuracy", "eval_loss")


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def prepare_workdir(workdir: str) -> str:
    """Creates `workdir` and proves it writable, before any work is done."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} cannot be written ({e.strerror}); "
                         f"pass a --workdir you can write to") from None
    return workdir


def fit(config, workdir: str, model: nnx.Module, dataset) -> dict:
    """Trains `model` on `dataset` as `config` says; checkpoints, metrics and plot go to `workdir`.

    Resumes from the latest checkpoint in `workdir` if there is one. Returns a summary with the
    final state, the best checkpoint's step and why training stopped.
    """
    # --- setup: everything that can fail on bad input fails here, before any checkpoint is touched
    prepare_workdir(workdir)
    chief = jax.process_index() == 0
    say = print if chief else (lambda *a, **k: None)
    batch_size = config.dataset.batch_size
    steps_per_epoch = dataset.steps_per_epoch(batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint.every or eval_every
    monitor = config.early_stopping.monitor
    if monitor not in MONITORED:
        raise ValueError(f"early_stopping.monitor={monitor!r} is not one of {', '.join(MONITORED)}")
    better = (lambda a, b: a < b) if checkpoint.metric_mode(monitor) == "min" else (
        lambda a, b: a > b)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())

    trainer = Trainer(config, model, steps_per_epoch)
    manager = checkpoint.open_manager(workdir, keep=config.checkpoint.keep,
                                      keep_best=config.checkpoint.keep_best, monitor=monitor)
    config_dict = config.to_dict()
    state = trainer.initial_state
    if manager.latest_step() is not None:
        state = checkpoint.restore(manager, manager.latest_step(), state)
        say(f"resumed from the checkpoint at step {manager.latest_step()} in {manager.directory}")
    step = int(trainer.fetch({"step": state.step})["step"])
    history = [r for r in report.read_metrics(workdir) if r["step"] <= step]
    if chief:
        _rewrite_metrics(workdir, history)
    evals = [r[monitor] for r in history if monitor in r]
    best = None
    bad_evals = 0
    for value in evals:
        best, bad_evals = (value, 0) if best is None or better(value, best) else (best, bad_evals + 1)
    say(f"training {num_params(state):,} parameters for {num_steps} steps "
        f"({steps_per_epoch} per epoch, batch {batch_size}) on {trainer.mesh.devices.size} "
        f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es), "
        f"strategy {trainer.strategy}")
    state = trainer.place(state)

    # --- the loop
    stop_reason = "finished"
    pending = []  # (step, device metrics) not yet fetched: fetching every step would stall dispatch
    window_start, window_steps = time.perf_counter(), 0
    bar = tqdm(total=num_steps, initial=step, unit="step", disable=None if chief else True,
               dynamic_ncols=True)
    while step < num_steps and stop_reason == "finished":
        epoch, offset = divmod(step, steps_per_epoch)
        batches = dataset.train_batches(batch_size, seed=config.seed, epoch=epoch, **shard)
        end = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)  # `steps` may end mid-epoch
        for batch in itertools.islice(batches, offset, end):
            state, metrics = trainer.train_step(state, trainer.put(batch))
            step += 1
            window_steps += 1
            pending.append((step, metrics))
            bar.update()
            do_eval = step % eval_every == 0 or step == num_steps
            do_save = step % checkpoint_every == 0 or step == num_steps
            if not (do_eval or do_save or step % config.log_every == 0):
                continue

            # Fetch the pending metrics; a NaN or Inf stops here, before anything is saved.
            fetched = [(s, trainer.fetch(m)) for s, m in pending]
            pending = []
            for s, m in fetched:
                if not all(math.isfinite(v) for v in m.values()):
                    bar.close()
                    manager.wait_until_finished()
                    last = manager.latest_step()
                    kept = (f"the last good checkpoint (step {last}) is kept in {manager.directory}"
                            if last is not None else "no checkpoint had been saved yet")
                    what = next(k for k, v in m.items() if not math.isfinite(v))
                    raise Diverged(f"{what} became {m[what]} at step {s}; stopped, and {kept}. "
                                   f"Try a lower optimizer.learning_rate or optimizer.clip_norm")
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "epoch": step / steps_per_epoch,
                      "train_loss": float(np.mean([m["loss"] for _, m in fetched])),
                      "train_accuracy": float(np.mean([m["accuracy"] for _, m in fetched])),
                      "examples_per_s": window_steps * batch_size / elapsed}
            bar.set_postfix(loss=f"{record['train_loss']:.4f}",
                            acc=f"{record['train_accuracy']:.3f}",
                            ex_per_s=f"{record['examples_per_s']:.0f}")

            if do_eval:
                result = trainer.evaluate(trainer.gather(state), dataset.eval_batches(
                    config.eval_split, config.dataset.eval_batch_size, **shard))
                record.update(eval_loss=result["loss"], eval_accuracy=result["accuracy"])
                if best is None or better(record[monitor], best):
                    best, bad_evals = record[monitor], 0
                else:
                    bad_evals += 1
                if chief:
                    bar.write(f"step {step:>6} epoch {record['epoch']:6.2f}  train loss "
                              f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
                              f"{config.eval_split} loss {result['loss']:.4f} "
                              f"acc {result['accuracy']:.4f}")
                patience = config.early_stopping.patience
                if patience and bad_evals >= patience:
                    stop_reason = (f"early stopping: {monitor} did not improve on {best:.4f} "
                                   f"for {patience} evaluations")
            if chief:
                report.append_metrics(workdir, record)
                history.append(record)
            if do_save or stop_reason != "finished":
                saved_metrics = {monitor: record[monitor]} if monitor in record else None
                checkpoint.save(manager, trainer.gather(state), config_dict, saved_metrics)
            if stop_reason != "finished":
                break
            window_start, window_steps = time.perf_counter(), 0  # evaluation is not training time
    bar.close()
    manager.wait_until_finished()

    # --- what the run leaves behind
    if stop_reason != "finished":
        say(stop_reason)
    title = f"{config.model.name} on {config.dataset.name}: {os.path.abspath(workdir)}"
    curves = report.plot_curves(workdir, title, config.eval_split) if chief else None
    return {"state": trainer.gather(state), "trainer": trainer, "best_step": manager.best_step(),
            "latest_step": manager.latest_step(), "stop_reason": stop_reason,
            "history": history, "curves": curves, "checkpoints": str(manager.directory)}


def _rewrite_metrics(workdir: str, records: list[dict]) -> None:
    """Keeps only the records up to the resumed step; written whole, then renamed into place."""
    path = os.path.join(workdir, report.METRICS_FILE)
    if not os.path.exists(path):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(report.json_line(r) for r in records)
    os.replace(tmp, path)
