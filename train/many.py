"""Many small runs of one model as one compiled program: `jax.vmap` over the runs' states.

Studies and sweeps train the same small net again and again (seeds, learning rates). Each run
alone leaves the devices idle between its small steps; stacked on a leading run axis, one step
trains every run at once. The runs may differ only in `seed` (initial weights, dropout and the
data order: each run reads its own batches) and in `optimizer.learning_rate` (traced into the
optimizer, so every run keeps the optimizer state of an ordinary run). Every run writes its own
work directory exactly as `train.loop.fit` does: the same records at the same steps, the same
checkpoints (restored by `descent eval` like any other), curves and TensorBoard files.

How equal to the runs alone: a batched matmul sums in another order than a single one, so each
step agrees to rounding (6e-8 in the parameters after the 78 steps of digits_mlp.py:tiny,
tests/test_many.py). Rounding does not stay there: Adam turns rounding-level gradients of units
that barely learn into full steps, and over the 1,560 steps of digits_mlp.py the parameters
drift apart (max 0.15, median 6e-4 for seed 0 here) while the results agree (test accuracy
0.9778 both, loss 0.1709 against 0.1707): another sample of the same run, not the same bits.

The runs train on one device (the mesh of each run's Trainer is `data=1`): runs this small
gain nothing from splitting a batch, and many of them fill the device instead.
"""
import concurrent.futures
import contextlib
import copy
import math
import os
import signal
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from train import checkpoint, report, workdir_lock
from train.loop import (MAX_STEPS_IN_FLIGHT, RESUMABLE_CHANGES, EarlyStopping, Preempted,
                        data_position, flat, option, prepare_workdir, stop_requests,
                        write_record)
from train.optimizers import make_optimizer
from train.state import num_params
from train.step import make_eval_step, make_train_step, summarize_eval
from train.throughput import speed
from train.trainer import Trainer, total_steps
from train.writers import JsonLines, TensorBoard, Writers

# What may differ between the runs of one program: the seed, and scalars of the optimizer that
# enter its arithmetic only (never its structure).
VARIED = ("seed", "optimizer.learning_rate")


def check_group(configs: Sequence) -> list[str]:
    """Refuses configs that cannot train as one program (they differ in more than `VARIED`,
    or in nothing at all); returns the keys that do differ."""
    if not configs:
        raise ValueError("train_many needs at least one config")
    flats = [flat(c.to_dict()) for c in configs]
    keys = sorted(set().union(*flats))
    differ = [k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats[1:])]
    others = [k for k in differ if k not in VARIED and k not in ("parallel.strategy",
                                                                   "parallel.mesh")]
    if others:
        raise ValueError(f"runs trained as one program may differ only in "
                         f"{' and '.join(VARIED)}; these differ too: {', '.join(others)}. "
                         f"Train them as separate groups")
    seen = {}
    for i, f in enumerate(flats):
        same = tuple(f.get(k) for k in VARIED)
        if same in seen:
            raise ValueError(f"runs {seen[same]} and {i} are the same run (seed {same[0]}, "
                             f"learning rate {same[1]}); give each run its own seed or "
                             f"learning rate")
        seen[same] = i
    return differ


def scaled(tx: optax.GradientTransformation, factor) -> optax.GradientTransformation:
    """`tx` with its updates multiplied by `factor` (traced: one value per run under vmap),
    keeping `tx`'s own state, so a checkpoint holds what an ordinary run's does."""
    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        return jax.tree.map(lambda u: factor.astype(u.dtype) * u, updates), state

    return optax.GradientTransformation(tx.init, update)


def make_many_step(trainer: Trainer, config, num_steps: int, steps_per_epoch: int,
                   same_learning_rate: bool = False, on_device=None):
    """`step(states_R, batches_R, learning_rates_R) -> (states_R, metrics_R)`: the train step
    `Trainer` builds, vmapped over runs. With `on_device` (a dataset held in memory), the step
    is `step(states_R, arrays, plans_R, learning_rates_R)` instead: each run reads its batch
    from the training split's `arrays` on the device by its own plan (`train_plans`), as
    `Trainer.device_feed` does for a run alone. Every optimizer here applies its learning rate
    last (optax's `scale_by_learning_rate`), so each run's optimizer is the config's made with
    learning rate 1 (schedule, clipping and weight decay included), its updates then scaled by
    the run's learning rate: the same arithmetic as the run alone, up to the rounding of
    lr * (s * u) against (lr * s) * u, and the same optimizer state. With
    `same_learning_rate` (runs that differ in their seed only), the config's optimizer is used
    as it is, without that rounding."""
    opt = config.optimizer
    unit = copy.deepcopy(opt)
    unit.learning_rate = 1.0
    unit_tx = make_optimizer(unit, num_steps, steps_per_epoch, config.dataset.batch_size)
    if same_learning_rate:
        own_tx = make_optimizer(opt, num_steps, steps_per_epoch, config.dataset.batch_size)
    l2 = opt.weight_decay if opt.name != "adamw" else 0.0  # as Trainer: adamw's is decoupled

    def one_run(state, batch, learning_rate):
        step = make_train_step(
            trainer.graphdef, trainer.task,
            own_tx if same_learning_rate else scaled(unit_tx, learning_rate), None,
            config.get("log", {}).get("layer_grad_norms", False),
            accumulate_steps=trainer.accumulate_steps, ema_decay=trainer.ema_decay, l2=l2,
            report_objective=bool(config.loss.label_smoothing or l2))
        return step(state, batch)

    many = jax.vmap(one_run)
    if on_device is None:
        return jax.jit(many, donate_argnums=0)

    def from_plans(states, arrays, plans, learning_rates):
        batches = jax.vmap(on_device.device_batch, in_axes=(None, 0))(arrays, plans)
        return many(states, batches, learning_rates)

    return jax.jit(from_plans, donate_argnums=0)


def fit_many(configs: Sequence, workdirs: Sequence[str], models: Sequence, dataset, *,
             console: bool = True, writers: Sequence = ()) -> list[dict]:
    """Trains one run per (config, workdir, model) as one vmapped program on one device.

    Each summary is what `train.loop.fit` returns for that run (`state`, `trainer`,
    `best_step`, `latest_step`, `stop_reason`, `history`, `curves`, `checkpoints`), plus
    `diverged` (the message, or None) and `diverged_at` (its step): a run whose loss became
    NaN or infinite stops there, keeping its last good checkpoint, while the others go on.
    Resumes when every work directory holds a checkpoint at the same step; other mixtures are
    refused with the steps. `writers` receive every record with `run` (its index) added.
    """
    if not (len(configs) == len(workdirs) == len(models)):
        raise ValueError(f"{len(configs)} configs, {len(workdirs)} workdirs and {len(models)} "
                         f"models: give one of each per run")
    if len(set(map(os.path.abspath, workdirs))) < len(workdirs):
        raise ValueError("two runs share a workdir; give each run its own")
    check_group(configs)
    if jax.process_count() > 1:
        raise ValueError("train_many runs in one process; run it without --coordinator")
    for w in workdirs:
        prepare_workdir(w)
    say = print if console else _silent
    with contextlib.ExitStack() as locks:
        for w in workdirs:
            locks.enter_context(workdir_lock.hold(w, exclusive=True, say=say))
        return _fit_many([copy.deepcopy(c) for c in configs], list(workdirs), list(models),
                         dataset, console, writers)


def _fit_many(configs, workdirs, models, dataset, console, user_writers) -> list[dict]:
    # --- setup: everything that can fail on bad input fails here
    say = print if console else _silent
    config, runs = configs[0], len(configs)
    steps_per_epoch = dataset.steps_per_epoch(config.dataset.batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint.every or eval_every
    for c in configs:  # one device: nothing to split
        c.parallel.strategy, c.parallel.mesh = "dp", "data=1"
    trainers = [Trainer(c, m, steps_per_epoch, dataset.task) for c, m in zip(configs, models)]
    trainer = trainers[0]
    if option(config, "profile.start_step", 0):
        raise ValueError("profile.start_step applies to single runs; profile one run with "
                         "descent train --config ... (without --seeds)")
    stoppings = [EarlyStopping(c.early_stopping, dataset.task, c.dataset.name,
                               ema=trainer.ema_decay > 0) for c in configs]
    dataset.num_examples(config.eval_split)
    described = dataset.description()

    # --- resume: every run from its checkpoint at one common step, or every run from scratch
    managers, states, step, histories = _resume_all(configs, workdirs, trainers, say)
    for stopping, history in zip(stoppings, histories):
        stopping.replay(history)
    say(dataset.summary())
    if step >= num_steps:
        say(f"these runs are finished: their checkpoints at step {step} are the last of their "
            f"{num_steps} steps. To train them further, raise --config.epochs (or "
            f"--config.steps)")
    else:
        say(f"training {runs} runs of {num_params(trainer.initial_state):,} parameters as one "
            f"program for {num_steps} steps ({steps_per_epoch} per epoch, batch "
            f"{config.dataset.batch_size}) on 1 {jax.devices()[0].platform} device")
    first_step = step + 1
    stacked = stack(states)
    learning_rates = jnp.asarray([c.optimizer.learning_rate for c in configs], jnp.float32)
    # in-memory data is kept on the device: each step is sent its runs' row numbers only
    on_device = (dataset if step < num_steps and hasattr(dataset, "device_batch")
                 and option(config, "dataset.on_device", True) else None)
    arrays = ((jax.device_put(dataset.device_arrays("train"), jax.devices()[0]),)
              if on_device is not None else ())  # the step's second argument, or none
    many_step = make_many_step(trainer, config, num_steps, steps_per_epoch,
                               len({c.optimizer.learning_rate for c in configs}) == 1, on_device)
    unstack = jax.jit(lambda s: [jax.tree.map(lambda x, i=i: x[i], s) for i in range(runs)])
    evaluate = make_evaluate_many(trainer)
    # every run's learning rate at a step, as each run's trainer has it: one program, not one each
    rates_at = jax.jit(lambda step: jnp.stack([t.learning_rate(step) for t in trainers]))
    batches = _batches(dataset, configs, step, num_steps, steps_per_epoch,
                       on_device is not None)
    first = next(batches, None)
    compiled, flops = None, None
    if first is not None:
        start = time.perf_counter()
        compiled = many_step.lower(stacked, *arrays, first[1], learning_rates).compile()
        compile_s = time.perf_counter() - start
        try:
            flops = float(compiled.cost_analysis()["flops"]) / runs
        except Exception:  # noqa: BLE001 - a backend without cost analysis
            flops = None
    chief = jax.process_index() == 0
    run_writers = [Writers([JsonLines(w), *[_Tagged(u, i) for u in user_writers]] + (
        [TensorBoard(w, c.eval_split, h)] if chief and option(c, "log.tensorboard", True)
        else [])) for i, (c, w, h) in enumerate(zip(configs, workdirs, histories))]
    devices = [jax.devices()[0]]

    # --- the loop: every run steps together; a run that stops (early stopping, divergence)
    # is no longer recorded or saved, and its state is kept as it stood
    active = [True] * runs
    final = [None] * runs        # the state of a run that stopped before the end
    stop_reasons = [None] * runs
    diverged = [None] * runs
    diverged_at = [None] * runs  # the step whose loss (or another metric) was not finite
    pending = []
    # Saving is orbax's Python work (~0.06 s a checkpoint here), once per run: done by a thread
    # behind the training, one save at a time, in order; its failures are raised here.
    saves = _Saves()
    bar = tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=None if console else True, desc=f"{runs} runs")
    with stop_requests() as stop_signals, contextlib.ExitStack() as cleanup:
        for w in run_writers:
            cleanup.callback(w.close)
        cleanup.callback(bar.close)
        cleanup.callback(saves.close)
        if compiled is not None:
            for i, w in enumerate(run_writers):
                record = {"step": first_step, "time": time.time(), "compile_s": compile_s}
                if flops:
                    record["flops_per_step"] = flops
                write_record(w, histories[i], record, managers[i], workdirs[i])
            batches = _chain(first, batches)
        window_start = time.perf_counter()
        for step, batch in batches:
            preempted = bool(stop_signals)
            do_eval = step % eval_every == 0 or step == num_steps
            do_save = step % checkpoint_every == 0 or step == num_steps or preempted
            do_log = do_eval or do_save or step % config.log_every == 0 or step == first_step
            stacked, metrics = compiled(stacked, *arrays, batch, learning_rates)
            bar.update()
            pending.append((step, metrics))
            if len(pending) > MAX_STEPS_IN_FLIGHT:
                pending[-MAX_STEPS_IN_FLIGHT - 1][1]["loss"].block_until_ready()
            if not do_log:
                continue
            fetched = [(s, jax.device_get(m)) for s, m in pending]
            pending = []
            seconds = time.perf_counter() - window_start if step > first_step else None
            per_run = unstack(stacked) if do_eval or do_save else None
            rates = np.asarray(rates_at(step - 1))
            evaluated = (_evaluate_many(evaluate, stacked, dataset, config, runs)
                         if do_eval else None)
            for i in range(runs):
                if not active[i]:
                    continue
                mine = [(s, {k: float(v[i]) for k, v in m.items()}) for s, m in fetched]
                bad = _not_finite(mine)
                if bad:
                    saves.finish()
                    checkpoint.wait(managers[i])
                    diverged[i], diverged_at[i] = _diverged_message(bad, managers[i]), bad[0]
                    active[i], final[i] = False, per_run[i] if per_run else unstack(stacked)[i]
                    stop_reasons[i] = diverged[i]
                    continue
                record = _train_record(step, mine, trainers[i], float(rates[i]),
                                       steps_per_epoch, seconds, flops, devices)
                if evaluated is not None:
                    record.update(evaluated[i])
                    stop_reasons[i] = stoppings[i].update(record)
                write_record(run_writers[i], histories[i], record, managers[i], workdirs[i])
                if do_save or stop_reasons[i]:
                    saves.start(managers[i], step, per_run[i], configs[i].to_dict(),
                                data_position(step, steps_per_epoch, configs[i]),
                                stoppings[i].ranking(record), described)
                if stop_reasons[i]:
                    active[i], final[i] = False, per_run[i]
            saves.raise_failures()
            if preempted:
                saves.finish()
                for m in managers:
                    checkpoint.wait(m)
                raise Preempted(stop_signals[0] if stop_signals else signal.SIGTERM, step,
                                ", ".join(str(m.directory) for m in managers))
            if not any(active):
                break
            window_start = time.perf_counter()
        saves.finish()
    for m in managers:
        checkpoint.wait(m)

    # --- what each run leaves behind
    states = unstack(stacked)
    summaries = []
    for i, (c, w) in enumerate(zip(configs, workdirs)):
        title = f"{c.model.name} on {c.dataset.name}: {os.path.abspath(w)}"
        curves = report.plot_curves(w, title, c.eval_split) if chief else None
        summaries.append({
            "state": final[i] if final[i] is not None else states[i], "trainer": trainers[i],
            "best_step": managers[i].best_step(), "latest_step": managers[i].latest_step(),
            "stop_reason": stop_reasons[i] or "finished", "diverged": diverged[i],
            "diverged_at": diverged_at[i],
            "history": histories[i], "curves": curves, "checkpoints": str(managers[i].directory)})
    return summaries


# --- the loop's helpers, in the order it calls them

def _resume_all(configs, workdirs, trainers, say):
    """(managers, states, step, histories): every run's newest readable checkpoint, which must
    all be at one step, or every run's initial state at step 0."""
    managers, found = [], []
    for c, w, t in zip(configs, workdirs, trainers):
        checkpoint.remove_incomplete(w, say)
        manager = checkpoint.open_manager(w, keep=c.checkpoint.keep,
                                          keep_best=c.checkpoint.keep_best,
                                          monitor=c.early_stopping.monitor)
        managers.append(manager)
        found.append(checkpoint.restore_latest_good(manager, t.initial_state, say))
    steps = [r[1] if r is not None else 0 for r in found]
    if len(set(steps)) > 1:
        listed = ", ".join(f"{w}: {s or 'none'}" for w, s in zip(workdirs, steps))
        raise ValueError(f"the runs' work directories hold their latest checkpoints at "
                         f"different steps ({listed}); resuming them as one program needs one "
                         f"step for all. Resume them one by one with descent train, or use new "
                         f"work directories")
    step, states = steps[0], []
    for c, w, t, m, r in zip(configs, workdirs, trainers, managers, found):
        if r is None:
            states.append(t.initial_state)
            continue
        saved = flat(checkpoint.saved_config(m, step))
        now = flat(c.to_dict())
        changed = sorted(k for k in saved if saved[k] != now.get(k)
                         and k not in RESUMABLE_CHANGES
                         and not (isinstance(saved[k], list) and tuple(saved[k]) == now.get(k)))
        if changed:
            raise ValueError(f"the checkpoint at step {step} in {w} was trained with another "
                             f"config ({', '.join(f'{k} {saved[k]!r} -> {now.get(k)!r}' for k in changed)}); "
                             f"resume with the config it was saved with, or use another "
                             f"--workdir")
        states.append(r[0])
    if step:
        say(f"resumed {len(workdirs)} runs from their checkpoints at step {step}")
    histories = []
    for w in workdirs:
        history = [r for r in report.read_metrics(w) if r["step"] <= step]
        path = os.path.join(w, report.METRICS_FILE)
        if os.path.exists(path):
            report.write_atomically(path, "".join(report.json_line(r) for r in history))
        histories.append(history)
    return managers, states, step, histories


def _batches(dataset, configs, step: int, num_steps: int, steps_per_epoch: int,
             plans: bool = False):
    """(step number, {"inputs": (R, B, ...), "targets": (R, B, ...)}) for every step after
    `step`: run r's batch is the one its own seed's run would read; with `plans`, the plans of
    those batches (`train_plans`: row numbers and augmentation draws), stacked the same way."""
    batch_size = configs[0].dataset.batch_size
    read = dataset.train_plans if plans else dataset.train_batches
    while step < num_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        end = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)
        streams = [read(batch_size, seed=c.seed, epoch=epoch, start=offset) for c in configs]
        for _ in range(end - offset):
            per_run = [next(s) for s in streams]
            step += 1
            yield step, {k: np.stack([b[k] for b in per_run]) for k in per_run[0]}


class _Saves:
    """`checkpoint.save` calls run by one thread, in the order they were started."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="descent-many")
        self._started = []

    def start(self, *args) -> None:
        self._started.append(self._pool.submit(checkpoint.save, *args))

    def raise_failures(self) -> None:
        """Raises the error of the first finished save that failed; forgets those that did not."""
        while self._started and self._started[0].done():
            self._started.pop(0).result()

    def finish(self) -> None:
        while self._started:
            self._started.pop(0).result()

    def close(self) -> None:  # on the way out, after an error too: saves under way complete
        self._pool.shutdown(wait=True)


def _silent(*_, **__) -> None:
    pass


def _chain(first, rest):
    yield first
    yield from rest


class _Tagged:
    """A user's writer, handed each record with the run's index under `run`."""

    def __init__(self, writer, run: int):
        self.writer, self.run = writer, run

    def write(self, record: dict) -> None:
        record = {**record, "run": self.run}
        self.writer.write(record) if hasattr(self.writer, "write") else self.writer(record)


def make_evaluate_many(trainer: Trainer):
    """`evaluate(stacked_states, batches, weights) -> [metrics of run 0, ...]`: what
    `trainer.evaluate` returns for each run, every batch scored by every run in one call."""
    eval_many = jax.jit(jax.vmap(make_eval_step(trainer.graphdef, trainer.task),
                                 in_axes=(0, None)))

    def evaluate(stacked, batches, weights: str = "raw") -> list[dict]:
        states = stacked if weights == "raw" else stacked.replace(params=stacked.ema_params)
        sums = None
        for batch in batches:
            got = eval_many(states, batch)
            sums = got if sums is None else jax.tree.map(jnp.add, sums, got)
        sums = jax.device_get(sums)
        runs = len(next(iter(sums.values())))
        return [summarize_eval({k: v[i] for k, v in sums.items()}) for i in range(runs)]

    return evaluate


def stack(states: Sequence) -> object:
    """Runs' states -> one state whose arrays have a leading run axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _evaluate_many(evaluate, stacked, dataset, config, runs: int) -> list[dict]:
    """`eval_<metric>` of every run on `eval_split` (and `eval_ema_<metric>` with a moving
    average of the weights), as `train.loop.fit` records them."""
    out = [{} for _ in range(runs)]
    for weights, prefix in (("raw", "eval_"), ("ema", "eval_ema_"))[
            :1 + bool(config.optimizer.get("ema_decay", 0.0))]:
        results = evaluate(stacked, dataset.eval_batches(
            config.eval_split, config.dataset.eval_batch_size), weights)
        for i, result in enumerate(results):
            out[i].update({prefix + k: v for k, v in result.items() if k != "examples"})
    return out


def _not_finite(fetched) -> tuple | None:
    for step, metrics in fetched:
        bad = next((k for k, v in metrics.items() if not math.isfinite(v)), None)
        if bad is not None:
            return step, bad, metrics[bad]
    return None


def _diverged_message(bad, manager) -> str:
    step, key, value = bad
    last = manager.latest_step()
    kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
            else "no checkpoint had been saved yet")
    return (f"{key} became {value} at step {step}; stopped, and {kept}. Try a lower "
            f"optimizer.learning_rate or optimizer.clip_norm")


def _train_record(step: int, fetched, trainer: Trainer, learning_rate: float,
                  steps_per_epoch: int,
                  seconds: float | None, flops: float | None, devices) -> dict:
    """The record `train.loop.fit` writes for these steps of one run, with the same fields in
    the same order; the throughput is each run's own: steps over the whole program's time."""
    last = fetched[-1][1]
    means = ["loss", "objective", *trainer.task.metrics]
    record = {"step": step, "epoch": step / steps_per_epoch, "time": time.time(),
              **{f"train_{k}": float(np.mean([m[k] for _, m in fetched]))
                 for k in means if k in last},
              "learning_rate": learning_rate,
              **{k: last[k] for k in sorted(last, key=lambda k: (k != "grad_norm", k))
                 if k not in means}}
    if seconds is not None:
        record.update(speed(len(fetched), seconds, trainer.batch_size, flops, devices))
    return record
