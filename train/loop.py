"""The training loop, one for a run alone and for a group of runs trained as one program.

`fit` trains one run; `train.many.fit_many` trains runs that differ only in seed and learning
rate as one vmapped program. Both hand `train_runs` the runs as a `Runs` object, which says how
a step is compiled and called and how each run's state, metrics and evaluation are read from
the running state (`train.runs`); a run alone is `One`, a group `train.many.Group`.
Everything else (the resume, the records, evaluation, early stopping, checkpoints,
preemption, the final test) is written once, here. Messages go through `logging` (this
module's logger); a run made with `console=False` logs its routine ones at DEBUG.

The dataset meets `train.dataset.Dataset`; one that is `InMemory` keeps its training split on
the devices, each step reading its batch there.
"""
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
from jax.experimental import multihost_utils
import numpy as np
from flax import nnx

from train import checkpoint, report, trackers, warm_start, workdir_lock
from train.dataset import Dataset, Text
from train.resume import (EarlyStopping, data_position, group_of, open_checkpoints,
                          prepare_workdir, resume)
from train.runs import One, Runs
from train.state import TrainState
from train.throughput import Profile, speed
from train.trainer import Trainer, total_steps
from train.writers import Console, JsonLines, TensorBoard, Writers

log = logging.getLogger(__name__)

# Steps dispatched ahead of the one the host last waited for. Enough to keep a device busy
# while the host prepares the next batch; bounded, because each queued step holds its batch in
# device memory, and because XLA's CPU collectives over simulated devices abort ("only 7 of 8
# threads arrived") when hundreds of steps are queued.
MAX_STEPS_IN_FLIGHT = 2
# The most steps a run may take: the state counts them in a 32-bit integer.
MAX_STEPS = 2**31 - 1


class Diverged(RuntimeError):
    """The loss became NaN or infinite at `step`; the last good checkpoint is kept."""

    def __init__(self, message: str, step: int):
        self.step = step
        super().__init__(message)


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; the step in flight finished and was saved."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; its "
                         f"checkpoint is saved in {directory}. Run the same command to resume")


def fit(config, workdir: str, model: nnx.Module | Callable[[], nnx.Module], dataset: Dataset,
        *, console: bool = True, allow_config_change: bool = False, writers: Sequence = (),
        test_split: str | None = None) -> dict:
    """Trains `model` on `dataset` as `config` says; checkpoints, metrics and plot (unless
    `log.curves` is off) go to `workdir`.
    `model` may be a function that builds it: its state is then made in place (`Trainer`).

    Every check of the config and the dataset runs before the work directory is created; it is
    then locked while the run trains (`train.workdir_lock`): a second trainer, or an evaluation
    of it, is refused at once with the holder's pid, host and start time.

    Resumes from the newest readable checkpoint in `workdir` if there is one, exactly where it
    stopped. SIGTERM or SIGINT finishes the current step, saves and raises Preempted; a loss
    that becomes NaN or infinite raises Diverged, keeping the last good checkpoint. Returns a
    summary with the final state, the best checkpoint's step and why training stopped; with
    `test_split`, also `test` (the best checkpoint's metrics on it, written to
    `<workdir>/eval_<split>_<step>.json`) and `tests` (those of the raw weights and, with
    `optimizer.ema_decay`, of their moving average).

    Every record (`train.writers`) goes to `<workdir>/metrics.jsonl`, to TensorBoard event files
    under `<workdir>/tensorboard/` (unless `log.tensorboard` is off), to the console, and to
    each of `writers`: callables, or objects with `write(record)` (on process 0 only).
    `console=False` keeps the progress bar and the per-evaluation lines off the terminal and
    logs the run's routine messages at DEBUG (for programs that train many runs and report on
    their own); the files are written all the same. Resuming with a config that differs from
    the saved one in more than `RESUMABLE_CHANGES` is refused, naming the keys, unless
    `allow_config_change` (the change then goes into `<workdir>/history.jsonl`); so is
    resuming on other data.
    """
    trainer = Trainer(config, model, dataset)
    (summary,) = train_runs(One(trainer, dataset, config), [config], [workdir], dataset,
                            console=console, allow_config_change=allow_config_change,
                            writers=writers, test_split=test_split)
    if summary["diverged"]:
        raise Diverged(summary["diverged"], summary["diverged_at"])
    return summary


@dataclasses.dataclass
class _Run:
    """One run's part of the loop: where it writes, and how far it got."""
    config: object
    workdir: str
    stopping: EarlyStopping
    checkpoints: checkpoint.Checkpoints | None = None
    holding: workdir_lock.Holding | None = None  # the work directory's lock, or bucket lease
    history: list = dataclasses.field(default_factory=list)
    writers: Writers | None = None
    trackers: "trackers.Trackers | None" = None  # W&B, MLflow (`log.trackers`), on process 0
    stop_reason: str | None = None
    diverged_at: int | None = None  # the step whose loss (or another metric) was not finite
    final: TrainState | None = None  # the state of a run that stopped before the others

    @property
    def active(self) -> bool:
        return self.stop_reason is None


class _Plan(NamedTuple):
    """When things happen, in steps."""
    steps_per_epoch: int
    num_steps: int
    eval_every: int
    checkpoint_every: int
    log_every: int


def train_runs(runs: Runs, configs: Sequence, workdirs: Sequence[str], dataset: Dataset, *,
               console: bool = True, allow_config_change: bool = False,
               writers: Sequence = (), test_split: str | None = None) -> list[dict]:
    """Trains `runs` (one config and work directory each), as `fit` describes for one run;
    returns a summary per run, with `diverged` (the message, or None) and `diverged_at`."""
    # --- setup: everything that can fail on bad input fails here, before any file is touched
    config = configs[0]
    ema = runs.trainers[0].ema_decay > 0
    members = [_Run(c, w, EarlyStopping(c.early_stopping, dataset.task, c.dataset.name, ema))
               for c, w in zip(configs, workdirs)]
    checkpoint.check_retention(config.checkpoint.keep, config.checkpoint.keep_best)
    steps_per_epoch = dataset.steps_per_epoch(config.dataset.batch_size)
    eval_every = config.eval_every or steps_per_epoch
    plan = _Plan(steps_per_epoch, total_steps(config, steps_per_epoch), eval_every,
                 config.checkpoint.every or eval_every, config.log_every)
    if plan.num_steps > MAX_STEPS:
        raise ValueError(f"{plan.num_steps:,} steps ({steps_per_epoch} per epoch) are more than "
                         f"the state's 32-bit step counter holds ({MAX_STEPS:,}); lower "
                         f"--config.epochs or --config.steps")
    profile = Profile(config.profile.start_step, config.profile.num_steps, workdirs[0],
                      plan.num_steps)
    for split in dict.fromkeys(s for s in (config.eval_split, test_split) if s):
        dataset.num_examples(split)  # a split the dataset lacks is named now
    # a warm start that cannot be is named now; a run that resumes needs none
    starts = [warm_start.plan(c.init_from, t.initial_state, c.model.name)
              if c.init_from and not checkpoint.has_checkpoints(w) else None
              for c, w, t in zip(configs, workdirs, runs.trainers)]
    tracked_by = trackers.names(config, workdirs[0])
    chief = jax.process_index() == 0
    info = logging.INFO if console and chief else logging.DEBUG

    # --- the work directories: made and locked once, each checkpoint manager opened in it
    with contextlib.ExitStack() as held:
        for run in members:
            prepare_workdir(run.workdir)
            run.holding = held.enter_context(workdir_lock.hold(run.workdir, exclusive=True))
        for run in members:
            run.checkpoints = held.enter_context(open_checkpoints(run.workdir, run.config,
                                                                  group=len(members) > 1))
            run.trackers = held.enter_context(trackers.tracked(run.workdir, run.config,
                                                               tracked_by, chief))
        summaries = _train(runs, members, dataset, plan, profile, info, console and chief,
                           allow_config_change, writers, starts)
        if test_split:
            _test(runs, members, summaries, dataset, test_split)
        for run, summary in zip(members, summaries):
            if run.trackers:
                run.trackers.finish(summary)
        return summaries


def _train(runs: Runs, members: list[_Run], dataset: Dataset, plan: _Plan, profile: Profile,
           info: int, show: bool, allow_config_change: bool, user_writers: Sequence,
           starts: list[warm_start.Source | None]) -> list[dict]:
    config, chief = members[0].config, jax.process_index() == 0
    described = dataset.description()  # what rebuilds the dataset; saved with each checkpoint

    # --- resume: the newest checkpoint that reads back whole, and the data position saved with it
    states, step, histories = resume(
        [run.checkpoints for run in members], [run.config for run in members],
        [run.workdir for run in members], [t.initial_state for t in runs.trainers], described,
        plan.steps_per_epoch, allow_config_change, info, starts)
    for run, history in zip(members, histories):
        run.history = history
        run.stopping.replay(history)
    log.log(info, "%s", dataset.summary())
    log.log(info, "%s", runs.starting_line(step, plan.num_steps))
    first_step = step + 1
    profile.resuming_at(first_step)
    state = runs.join(states)
    batches = runs.batches(step, plan.num_steps)
    first = next(batches, None)
    if chief and any(run.config.log.curves for run in members):
        # the curves' plotting library loads while XLA compiles, which frees the GIL
        report.import_plotting_behind()
    compiled = runs.compile(state, first[1]) if first else None
    shown = Console(plan.num_steps, step, ("loss", *runs.trainers[0].task.metrics),
                    config.eval_split, show=show,
                    label=f"{runs.count} runs" if runs.count > 1 else None)
    _open_writers(members, shown, user_writers)

    # --- the loop: every run steps together; a run that stops (early stopping, divergence)
    # is no longer recorded or saved, and its state is kept as it stood
    pending = []  # (step, device metrics) not fetched yet
    saves = _Saves(behind=runs.count > 1)
    with contextlib.ExitStack() as held:
        stop_signals = held.enter_context(stop_requests())
        cleanup = held.enter_context(contextlib.ExitStack())
        for closing in [run.writers for run in members] + [shown, profile, saves]:
            cleanup.callback(closing.close)
        if compiled:
            for run in members:
                _write(run, _compile_record(first_step, *compiled, runs.devices), saves)
            batches = itertools.chain([first], batches)
        window_start = time.perf_counter()
        for step, batch in batches:
            preempted = (multihost_utils.reached_preemption_sync_point(step)
                         if jax.process_count() > 1 else bool(stop_signals))
            do_eval = step % plan.eval_every == 0 or step == plan.num_steps
            do_save = step % plan.checkpoint_every == 0 or step == plan.num_steps or preempted
            # step 1 is logged whatever log_every says: curves start there. A resumed run logs
            # where the uninterrupted run did (it resumes at one of its saves, each logged), so
            # its records, each the mean since the one before, are the same
            do_log = do_eval or do_save or step % plan.log_every == 0 or step == 1
            profile.before(step)
            state, metrics = runs.step(state, batch)
            profile.after(step, state)
            shown.advance()
            pending.append((step, metrics))
            if len(pending) > MAX_STEPS_IN_FLIGHT:  # dispatch ahead, but not unboundedly
                pending[-MAX_STEPS_IN_FLIGHT - 1][1]["loss"].block_until_ready()  # one is all
            if not do_log:
                continue
            fetched = [(s, runs.fetch(m)) for s, m in pending]
            pending = []
            per_run = [[(s, m[i]) for s, m in fetched] for i in range(runs.count)]
            _stop_the_diverged(runs, members, state, per_run, saves)  # before anything is saved
            if any(run.active for run in members):
                seconds = time.perf_counter() - window_start if step > first_step else None
                _log(runs, members, state, step, per_run, seconds, compiled[1], do_eval,
                     do_save, plan, described, saves)
            if preempted:
                _settle(members, saves)
                raise Preempted(stop_signals[0] if stop_signals else signal.SIGTERM, step,
                                ", ".join(run.checkpoints.directory for run in members))
            if not any(run.active for run in members):
                break
            window_start = time.perf_counter()  # evaluating and saving are not training time
        cleanup.close()  # the writers closed and the saves started made, then all on disk,
        _settle(members, saves)  # with SIGTERM and SIGINT still collected
    if stop_signals:  # they came while the last saves completed: the run ended, and says so
        raise Preempted(stop_signals[0], step,
                        ", ".join(run.checkpoints.directory for run in members))

    # --- what each run leaves behind
    return _summaries(runs, members, state, info)


# --- the loop's helpers, in the order it calls them

def _open_writers(members: list[_Run], shown: Console, user_writers: Sequence) -> None:
    """Each run's writers: its metrics file and TensorBoard files (process 0), and the user's;
    a run alone's go to the console too, a group's users see each run's index."""
    chief = jax.process_index() == 0
    for i, run in enumerate(members):
        mine = [shown, *user_writers] if len(members) == 1 else [_Tagged(w, i)
                                                                 for w in user_writers]
        run.writers = Writers([JsonLines(run.workdir), *mine] + (
            [TensorBoard(run.workdir, run.config.eval_split, run.history)]
            if chief and run.config.log.tensorboard else [])
            + ([run.trackers.write] if run.trackers else []))  # they end after the test


def _log(runs: Runs, members: list[_Run], state, step: int, per_run: list, seconds, flops,
         do_eval: bool, do_save: bool, plan: _Plan, described: dict, saves: "_Saves") -> None:
    """A logging point: each active run's record written (evaluated, with `do_eval`, which may
    stop it early) and its checkpoint saved (with `do_save`, or when it stops)."""
    canonical = runs.states(state) if do_eval or do_save else None
    group = group_of([run.config for run in members])  # saved with each run's data position
    evaluated = _evaluate(runs, state, members[0].config) if do_eval else None
    rates = runs.learning_rates(step - 1)
    for i, run in enumerate(members):
        if not run.active:
            continue
        record = _train_record(step, per_run[i], runs, rates[i], plan.steps_per_epoch, seconds,
                               flops)
        if evaluated:
            record.update(evaluated[i])
            run.stop_reason = run.stopping.update(record)
        _write(run, record, saves)
        if do_save or run.stop_reason:
            run.holding.check()  # a bucket's lease another trainer took over: no more saves
            saves.start(run.checkpoints, step, canonical[i], run.config.to_dict(),
                        data_position(step, plan.steps_per_epoch, run.config, group),
                        run.stopping.ranking(record), described)
        if run.stop_reason:
            run.final = canonical[i]
    saves.raise_failures()


def _compile_record(step: int, seconds: float, flops: float | None, devices: list) -> dict:
    """The compile time, once; XLA's FLOP count of a run's step (all its devices) where it has
    one."""
    record = {"step": step, "time": time.time(), "compile_s": seconds}
    if flops:
        record["flops_per_step"] = flops * len(devices)
    return record


def _write(run: _Run, record: dict, saves: "_Saves") -> None:
    """Keeps `record` in the run's history and hands it to its writers; a disk that refuses it
    is named, with the checkpoints already saved waited for."""
    run.history.append(record)
    try:
        run.writers.write(record)
    except OSError as e:
        saves.finish()
        run.checkpoints.wait()
        raise checkpoint.CheckpointWriteError(
            f"could not write the metrics of step {record['step']} into {run.workdir} "
            f"({e.strerror}); the checkpoints in {run.checkpoints.directory} are intact. Free "
            f"space or make the work directory writable, then rerun to resume") from e


def _stop_the_diverged(runs: Runs, members: list[_Run], state, per_run: list, saves) -> None:
    """Stops each run one of whose metrics became NaN or infinite, naming its step and the
    last good checkpoint it keeps."""
    for i, (run, fetched) in enumerate(zip(members, per_run)):
        bad = next(((s, k, v) for s, m in fetched for k, v in m.items()
                    if not math.isfinite(v)), None)
        if not run.active or bad is None:
            continue
        step, key, value = bad
        saves.finish()
        run.checkpoints.wait()
        last = run.checkpoints.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {run.checkpoints.directory}"
                if last is not None else "no checkpoint had been saved yet")
        run.stop_reason = (f"{key} became {value} at step {step}; stopped, and {kept}. Try a "
                           f"lower optimizer.learning_rate or optimizer.clip_norm")
        run.diverged_at, run.final = step, runs.states(state)[i]


def _train_record(step: int, fetched: list[tuple[int, dict]], runs: Runs, learning_rate: float,
                  steps_per_epoch: int, seconds: float | None, flops: float | None) -> dict:
    """One record of the steps since the last: their mean loss (and objective, and the task's
    metrics), the learning rate and norms at the last, and, over `seconds` (None for the
    first step, whose time holds one-off costs), the throughput: a run's steps over the whole
    program's time."""
    last = fetched[-1][1]
    means = ["loss", "objective", *runs.trainers[0].task.metrics]
    record = {"step": step, "epoch": step / steps_per_epoch, "time": time.time(),
              **{f"train_{k}": float(np.mean([m[k] for _, m in fetched]))
                 for k in means if k in last},
              "learning_rate": learning_rate,
              **{k: last[k] for k in sorted(last, key=lambda k: (k != "grad_norm", k))
                 if k not in means}}
    if seconds is not None:
        record.update(speed(len(fetched), seconds, runs.trainers[0].batch_size, flops,
                            runs.devices))
    return record


def _evaluate(runs: Runs, state, config) -> list[dict]:
    """Each run's `eval_<metric>` of the raw weights on `eval_split`; with a moving average of
    the weights, `eval_ema_<metric>` of it as well."""
    out = [{} for _ in range(runs.count)]
    for weights in ("raw", "ema") if runs.trainers[0].ema_decay else ("raw",):
        prefix = "eval_ema_" if weights == "ema" else "eval_"
        for mine, result in zip(out, runs.evaluate(state, config.eval_split, weights)):
            mine.update({prefix + k: v for k, v in result.items() if k != "examples"})
    return out


def _settle(members: list[_Run], saves: "_Saves") -> None:
    """Waits until every save started is complete on disk."""
    saves.finish()
    for run in members:
        run.checkpoints.wait()


def _test(runs: Runs, members: list[_Run], summaries: list[dict], dataset: Dataset,
          split: str) -> None:
    """Adds `test` and `tests` to the summary of every run that did not diverge: the metrics
    of its best checkpoint on `split`, scored by one evaluation of all of them."""
    tested = [i for i, s in enumerate(summaries) if not s["diverged"]]
    if not tested:
        return
    steps, states = [], []
    for i in tested:
        summary, run = summaries[i], members[i]
        best, last = summary["best_step"], int(summary["state"].step)
        if best is None or best == last:
            steps.append(last)
            states.append(summary["state"])
        else:
            steps.append(best)
            states.append(run.checkpoints.restore(best, runs.trainers[i].initial_state))
    joined = runs.join(states)
    for i in tested:
        summaries[i]["tests"] = {}
    for weights in ("raw", "ema") if runs.trainers[0].ema_decay else ("raw",):
        for i, step, metrics in zip(tested, steps, runs.evaluate(joined, split, weights)):
            summaries[i]["tests"][weights] = report.record_evaluation(members[i].workdir, {
                "split": split, "step": step, "checkpoint": "best", "weights": weights,
                **metrics, "counted": counted(dataset)})
    for i in tested:
        summaries[i]["test"] = summaries[i]["tests"][scored_weights(members[i].config)]


def _summaries(runs: Runs, members: list[_Run], state, info: int) -> list[dict]:
    """What each run leaves behind: its curves, and the summary `fit` returns."""
    summaries = []
    for run, trainer, final in zip(members, runs.trainers, runs.states(state)):
        if run.stop_reason and run.diverged_at is None:
            log.log(info, "%s", run.stop_reason)
        title = f"{run.config.model.name} on {run.config.dataset.name}: " + os.path.abspath(
            run.workdir)
        curves = (_plot(run.workdir, title, run.config.eval_split)
                  if jax.process_index() == 0 and run.config.log.curves else None)
        summaries.append({
            "state": run.final if run.final is not None else final, "trainer": trainer,
            "best_step": run.checkpoints.best_step(),
            "latest_step": run.checkpoints.latest_step(),
            "stop_reason": run.stop_reason or "finished",
            "diverged": run.stop_reason if run.diverged_at is not None else None,
            "diverged_at": run.diverged_at, "history": run.history, "curves": curves,
            "checkpoints": run.checkpoints.directory})
    return summaries


def _plot(workdir: str, title: str, eval_split: str) -> str | None:
    """The run's curves as a PNG in `workdir`; a disk that refuses it loses nothing else."""
    try:
        return report.plot_curves(workdir, title, eval_split)
    except OSError as e:
        log.warning("could not draw the curves into %s (%s); %s holds every record", workdir,
                    e.strerror, report.METRICS_FILE)
        return None


def scored_weights(config) -> str:
    """`ema` when the run ranks its checkpoints by the moving average of its weights
    (`early_stopping.monitor=eval_ema_...`), else `raw`: what its test and `descent eval`
    score unless told otherwise."""
    return "ema" if config.early_stopping.monitor.startswith("eval_ema_") else "raw"


def counted(dataset: Dataset) -> str:
    """What an evaluation's `examples` count: a language model's characters or tokens (its
    dataset's `unit`), else examples."""
    return getattr(dataset, "unit", "characters") if isinstance(dataset, Text) else "examples"


@contextlib.contextmanager
def stop_requests():
    """Collects SIGTERM and SIGINT in a list instead of dying, while training runs.

    Only in a single process's main thread: with several processes JAX's preemption service
    takes SIGTERM and agrees on a step with the others (`reached_preemption_sync_point`).
    """
    received = []
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield received
        return
    catch = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in catch}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Saves:
    """Checkpoint saves, made in the order they are started. A run alone saves inline: its
    state's buffers go to the next step (donated), so orbax must copy them off the devices
    before that step. A group saves in one thread behind training: each run's state is a
    slice of the group's that no step takes, and orbax's Python work (~0.06 s a checkpoint
    here) done once per run would stall the group. One step's saves at most are behind: the
    next step's wait for them, so a signal stops a group within a step and a save, and the
    states waiting to be saved are one per run, not a queue that grows."""

    def __init__(self, behind: bool):
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="descent-saves")
                      if behind else None)
        self._started, self._step = [], None

    def start(self, checkpoints: checkpoint.Checkpoints, step: int, *args) -> None:
        if self._pool is None:
            checkpoints.save(step, *args)
            return
        if step != self._step:
            self.finish()
        self._step = step
        self._started.append(self._pool.submit(checkpoints.save, step, *args))

    def raise_failures(self) -> None:
        """Raises the error of the first finished save that failed; forgets those that did not."""
        while self._started and self._started[0].done():
            self._started.pop(0).result()

    def finish(self) -> None:
        while self._started:
            self._started.pop(0).result()

    def close(self) -> None:  # on the way out, after an error too: saves under way complete
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _Tagged:
    """A user's writer, handed each record of a group's run with the run's index under `run`."""

    def __init__(self, writer, run: int):
        self.writer, self.run = writer, run

    def write(self, record: dict) -> None:
        record = {**record, "run": self.run}
        self.writer.write(record) if hasattr(self.writer, "write") else self.writer(record)
