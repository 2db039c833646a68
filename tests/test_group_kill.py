"""A group of runs (`descent train --seeds`) survives what a run alone survives: kill -9 at
controlled moments (after a checkpoint, during a save, between two runs' saves) and SIGTERM,
each followed by the same command, ends bit-identical to the group trained without a stop."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import run
from train import checkpoint, report
from train.loop import Preempted

from conftest import ROOT, config_path, xla_flags
from helpers import tiny_config

# Three seeds of the tiny MLP for 200 steps, a checkpoint every 20, two kept. The batch of 1,024
# makes the 20 steps between saves last longer than the saves (about 0.1 s on 2 cores): every
# run's save committed and the next not begun is then a moment that lasts long enough to stop at.
STEPS, EVERY, SEEDS = 200, 20, (0, 1, 2)
OPTIONS = {"steps": STEPS, "checkpoint.every": EVERY, "checkpoint.keep": 2,
           "dataset.batch_size": 1024}
RUNS = [f"seed_{s}" for s in SEEDS]
COMMAND = ["train", "--config", config_path("digits_mlp.py") + ":tiny",
           *(f"--config.{k}={v}" for k, v in OPTIONS.items()), "--seeds", "0-2"]


def start(workdir):
    """The group's command, at a lower priority than this test: on a loaded machine the test
    that watches its directories is then scheduled before the trainers, and so sees the moment
    it waits for rather than one long gone by (`nice` execs, so the pid is the trainer's)."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    return subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "experiments", *COMMAND,
                             "--workdir", str(workdir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_states(workdir) -> dict:
    return {name: jax.device_get(run.restore(os.path.join(workdir, name), STEPS,
                                             mesh="data=1").state) for name in RUNS}


def numbers(workdir) -> dict:
    """Each run's training records without their clock and speed: what must come out the
    same however often the group was stopped."""
    keep = ("step", "epoch", "learning_rate", "grad_norm")
    return {name: [{k: v for k, v in r.items() if k.startswith(("train_", "eval_")) or k in keep}
                   for r in report.read_metrics(os.path.join(workdir, name)) if "train_loss" in r]
            for name in RUNS}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same group trained by the same command without a stop: in a process like the ones
    that are stopped, since XLA on a CPU may split a batch of 1,024's sums differently in a
    process that has 8 devices."""
    root = tmp_path_factory.mktemp("group")
    proc = start(root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out + err)[-2000:]
    return final_states(str(root)), numbers(str(root))


class Frozen:
    """A run's checkpoint directories as a stopped (SIGSTOP) group leaves them."""

    def __init__(self, workdir):
        self.committed, self.saving, self.checksummed = [], [], []
        for name in RUNS:
            directory = os.path.join(workdir, name, "checkpoints")
            names = os.listdir(directory) if os.path.isdir(directory) else []
            steps = sorted(int(n) for n in names if n.isdigit())
            self.committed.append(steps)
            self.saving.append([int(n.split(".")[0]) for n in names
                                if ".orbax-checkpoint-tmp" in n])
            self.checksummed.append([s for s in steps if os.path.exists(
                os.path.join(directory, str(s), checkpoint.CHECKSUMS))])

    def newest(self) -> list[int]:
        return [steps[-1] if steps else 0 for steps in self.committed]

    def common(self, held) -> int:
        shared = set.intersection(*map(set, held)) if all(held) else set()
        return max(shared) if shared else 0


def running(proc) -> bool:
    """True while the group runs; its output, if it ended."""
    if proc.poll() is None:
        return True
    out, err = proc.communicate()
    raise AssertionError(f"the group ended (exit code {proc.returncode}) before the moment to "
                         f"stop it came: {(out + err)[-3000:]}")


def _flat(lists) -> list[int]:
    return [x for xs in lists for x in xs]


# Each kill comes within two saves of the step it aims at: the group is then still far from its
# last step, and the next start has the saves its own moment needs (a kill seen only after the
# last save would leave the next start nothing to do).
WINDOW = 2 * EVERY


def _near(newest: int, step: int) -> bool:
    return step <= newest < step + WINDOW


# The moments, each a test of the frozen group's directories at a save of `step` or soon after.
MOMENTS = {
    "after a checkpoint": lambda f, step: (len(set(f.newest())) == 1 and not _flat(f.saving)
                                           and _near(f.newest()[0], step)),
    "during a save": lambda f, step: (len(set(f.newest())) == 1
                                      and any(_near(s, step) for s in _flat(f.saving))),
    "between two runs' saves": lambda f, step: (len(set(f.newest())) > 1
                                                and _near(max(f.newest()), step)),
}


def kill_at(proc, workdir, moment: str, step: int) -> "Frozen":
    """Kills the group (kill -9) at `moment`, at `step` or soon after. Its directories are
    read with the group running and, every other read, with it frozen (SIGSTOP): some moments
    last a few milliseconds (every run's save committed and the next not begun), and a frozen
    read sees exactly the instant the group stopped at. A moment read while running is
    confirmed frozen before the kill; one gone by when it froze is let go."""
    deadline = time.monotonic() + 300
    frozen_read = False
    while True:
        assert running(proc)
        assert time.monotonic() < deadline, f"{moment} at step {step} never came"
        frozen_read = not frozen_read
        if frozen_read or MOMENTS[moment](Frozen(workdir), step):
            proc.send_signal(signal.SIGSTOP)
            frozen = Frozen(workdir)
            if MOMENTS[moment](frozen, step):
                proc.kill()
                return frozen
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)


def stop_with_sigterm(proc, workdir, step: int) -> "Frozen":
    """SIGTERM once every run holds a checkpoint at `step` or later; the group must exit 143."""
    deadline = time.monotonic() + 300
    while min(Frozen(workdir).newest()) < step:
        assert running(proc) and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    return Frozen(workdir)


def interrupt_then_finish(workdir, stops) -> list[dict]:
    """Runs the group, stopped at each of `stops` ((moment, step): kill -9 at a moment, or
    SIGTERM) and started again with the same command after each: per start, the stop and
    what the frozen group left (None for the last start), its exit code and what it printed."""
    starts = []
    for moment, step in [*stops, (None, None)]:
        proc = start(workdir)
        frozen = None
        if moment == "SIGTERM":
            frozen = stop_with_sigterm(proc, workdir, step)
        elif moment is not None:
            frozen = kill_at(proc, workdir, moment, step)
        out, err = proc.communicate(timeout=300)
        starts.append({"stop": moment, "at": step, "left": frozen, "code": proc.returncode,
                       "printed": out + err})
    return starts


# Two groups side by side (each start is one busy Python thread; CI has two cores): five kills
# early, midway and late, the first save among them, and a SIGTERM.
SEQUENCES = {
    "a": [("after a checkpoint", 20), ("between two runs' saves", 80), ("during a save", 140)],
    "b": [("between two runs' saves", EVERY), ("during a save", 80), ("SIGTERM", 140)],
}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(interrupt_then_finish, str(root / k), stops)
                   for k, stops in SEQUENCES.items()}
    return {k: (str(root / k), f.result()) for k, f in futures.items()}


def resumed_from(printed: str) -> list[int]:
    """The step each run of a start resumed from, as it printed them."""
    marker = "resumed from the checkpoint at step "
    return [int(line.split(marker)[1].split()[0]) for line in printed.splitlines()
            if marker in line]


def stopped_at(start: dict) -> int:
    """The step a start stopped by SIGTERM names in its last line."""
    line = start["printed"].strip().splitlines()[-1]
    assert line.startswith("descent: stopped by SIGTERM after step ") and "resume" in line, line
    return int(line.split("after step ")[1].split(";")[0])


def test_a_group_killed_at_five_moments_resumes_bit_identical_with_the_same_command(
        uninterrupted, interrupted, capsys):
    reference, records = uninterrupted
    starts = [s for _, group in interrupted.values() for s in group]
    kills = [s for s in starts if s["code"] == -signal.SIGKILL]
    kinds = {m: sum(s["stop"] == m for s in kills) for m in MOMENTS}
    # every kill came, as aimed: what the frozen group's directories showed is the moment
    assert kinds == {"after a checkpoint": 1, "during a save": 2, "between two runs' saves": 2}
    assert all(MOMENTS[s["stop"]](s["left"], s["at"]) for s in kills)
    assert sum(1 for s in kills if min(s["left"].newest()) == 0) == 1  # the first save's
    for workdir, group in interrupted.values():
        for name in RUNS:  # nothing half-written left behind
            assert not any(".orbax-checkpoint-tmp" in n
                           for n in os.listdir(os.path.join(workdir, name, "checkpoints")))
        assert group[-1]["code"] == 0, group[-1]["printed"][-2000:]
        states = final_states(workdir)
        for name in RUNS:  # every array of every run's final checkpoint
            leaves, expected = jax.tree.leaves(states[name]), jax.tree.leaves(reference[name])
            assert len(leaves) == len(expected) > 0
            for x, y in zip(leaves, expected):
                np.testing.assert_array_equal(x, y)
        # the same records at the same steps; a SIGTERM saves (and so logs) the step it stops
        # at: off the logging grid, that record is added and the next one averages fewer steps
        # (with one step an epoch, as here, every step is logged and nothing is added)
        stops = [stopped_at(s) for s in group if s["stop"] == "SIGTERM"]
        for name, mine in numbers(workdir).items():
            steps = [r["step"] for r in records[name]]
            assert [r["step"] for r in mine] == sorted(set(steps + stops)), name
            after_stops = {min(s for s in steps if s > stop) for stop in stops
                           if stop not in steps}
            left_out = set(stops) | after_stops
            assert [r for r in mine if r["step"] not in left_out] \
                == [r for r in records[name] if r["step"] not in left_out], name
    with capsys.disabled():  # shown in every run's log, not only on failure
        print(f"\ngroup kill -9: {kinds}, each resumed with the same command, bit-identical "
              f"at the end", end="")


def test_each_start_after_a_kill_resumes_every_run_from_the_newest_step_all_hold(interrupted):
    for _, group in interrupted.values():
        for stopped, after in zip(group, group[1:]):
            if stopped["code"] != -signal.SIGKILL:
                continue
            left = stopped["left"]
            common = left.common(left.committed)
            if common == 0:  # a run held nothing: the group starts again, all runs together
                assert resumed_from(after["printed"]) == [], after["printed"]
                continue
            # a checkpoint complete but not yet checksummed at the kill may be set aside
            assert resumed_from(after["printed"]) in (
                [common] * len(RUNS), [left.common(left.checksummed)] * len(RUNS)), (
                stopped["stop"], left.committed, after["printed"])


def test_sigterm_stops_a_group_with_143_at_one_step_every_run_saved(interrupted):
    _, group = interrupted["b"]
    ((stopped, after),) = [(s, a) for s, a in zip(group, group[1:]) if s["stop"] == "SIGTERM"]
    assert stopped["code"] == 143, stopped["printed"][-2000:]
    at = stopped_at(stopped)
    assert stopped["left"].newest()[0] <= at < STEPS
    assert resumed_from(after["printed"]) == [at] * len(RUNS)  # every run saved that step


def test_a_signal_while_the_last_saves_complete_is_not_dropped(tmp_path):
    """SIGTERM after the last step, while the group's final saves are written: the command
    ends as stopped (128 + the signal's number on the command line), every run's last
    checkpoint is whole, and the same call then finds the group finished."""
    named = run.variants(tiny_config(steps=10, **{"parallel.mesh": "data=1"}), seeds=(0, 1))
    workdirs = [str(tmp_path / name) for name in named]
    sent = []

    def at_the_last_step(record):
        if record.get("step") == 10 and "train_loss" in record and not sent:
            sent.append(os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)  # collected by the loop, not a death

    with pytest.raises(Preempted) as stopped:
        run.train_many(list(named.values()), workdirs, console=False,
                       writers=[at_the_last_step])
    assert sent and stopped.value.signum == signal.SIGTERM and stopped.value.step == 10
    summaries = run.train_many(list(named.values()), workdirs, console=False)
    assert [s["latest_step"] for s in summaries] == [10, 10]
