"""Checkpoints survive kill -9, SIGTERM, damage, full and read-only disks, and other topologies."""
import concurrent.futures
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import run
from train import checkpoint
from train.loop import fit

from conftest import ROOT, xla_flags
from helpers import tiny_config

# The tiny MLP for 4 epochs (156 steps), a checkpoint every 5 steps, on one CPU device.
RUN = ["--config", "experiments/configs/digits_mlp.py:tiny", "--config.epochs=4",
       "--config.checkpoint.every=5", "--config.checkpoint.keep=2"]
FINAL_STEP = 156


def start(workdir, *extra, devices=1):
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices)}
    replaced = {arg.split("=")[0] for arg in extra}  # an option given twice is refused
    run_args = [arg for arg in RUN if arg.split("=")[0] not in replaced]
    return subprocess.Popen([sys.executable, "-m", "experiments", "train", *run_args,
                             "--workdir", str(workdir), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(workdir, *extra):
    proc = start(workdir, *extra)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return out + err


def final_state(workdir):
    restored = run.restore(str(workdir), FINAL_STEP, mesh="data=1")
    return jax.device_get(restored.state)


def assert_bit_identical(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    finish(workdir)
    return final_state(workdir), workdir


IN_PROGRESS = re.compile(r"\d+\.orbax-checkpoint-tmp.*")  # orbax's name for a save under way


def checkpoint_names(workdir) -> list[str]:
    try:
        return os.listdir(workdir / "checkpoints")
    except FileNotFoundError:
        return []


def committed(names) -> list[int]:
    return sorted(int(n) for n in names if n.isdigit())


def saving(names) -> list[int]:
    return [int(n.split(".")[0]) for n in names if IN_PROGRESS.fullmatch(n)]


def stop_when(proc, workdir, ready) -> list[str]:
    """Polls the run's checkpoint directory until `ready(names)` holds, then freezes the run
    (SIGSTOP) and returns the directory's names as the frozen run leaves them."""
    deadline = time.monotonic() + 300
    while not ready(checkpoint_names(workdir)):
        assert proc.poll() is None, "the run ended before the moment to kill it came"
        assert time.monotonic() < deadline, "the moment to kill the run never came"
        time.sleep(0.002)
    proc.send_signal(signal.SIGSTOP)
    return checkpoint_names(workdir)


def kill_after_a_checkpoint(proc, workdir, step: int) -> int:
    """Kills the run once a checkpoint at `step` or later is on disk; returns the newest."""
    names = stop_when(proc, workdir, lambda names: any(s >= step for s in committed(names)))
    proc.kill()
    return committed(names)[-1]


def kill_during_a_save(proc, workdir, step: int) -> int:
    """Kills the run while it writes a checkpoint at `step` or later (its temporary directory
    is there while the run is frozen; a save that finished first is let go and the next one
    waited for); returns the newest checkpoint that was complete."""
    while True:
        names = stop_when(proc, workdir, lambda names: any(s >= step for s in saving(names)))
        if saving(names):
            proc.kill()
            return committed(names)[-1] if committed(names) else 0
        proc.send_signal(signal.SIGCONT)


def kill_9_then_resume(workdir, kill, steps) -> list[tuple[int, str]]:
    """Runs to the end, killed with SIGKILL by `kill` once at each of `steps` and started again
    after each: [(the newest complete checkpoint at a kill, what the next start printed)]."""
    newest, printed = [], []
    for step in steps:
        proc = start(workdir)
        newest.append(kill(proc, workdir, step))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        printed.append(out + err)
    printed.append(finish(workdir))
    return list(zip(newest, printed[1:]))


# 156 steps, a checkpoint every 5: kills early, midway and late in the run, of each kind
KILLS = {"after a checkpoint": (kill_after_a_checkpoint, (5, 60, 115)),
         "during a save": (kill_during_a_save, (10, 70, 125))}


def test_kill_9_after_a_checkpoint_and_during_a_save_then_resume_is_bit_identical(
        uninterrupted, tmp_path, capsys):
    reference, _ = uninterrupted
    workdirs = {kind: tmp_path / kind.replace(" ", "-") for kind in KILLS}
    # the two kinds side by side: each run is one busy Python thread, and CI has two cores
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {kind: pool.submit(kill_9_then_resume, workdirs[kind], kill, steps)
                   for kind, (kill, steps) in KILLS.items()}
    for kind, future in futures.items():
        kills = future.result()
        assert len(kills) == len(KILLS[kind][1]), kind  # every kill came, and as aimed
        for newest, printed in kills:  # each start went on from the newest whole checkpoint
            assert f"resumed from the checkpoint at step {newest} " in printed, (kind, printed)
        assert not saving(checkpoint_names(workdirs[kind]))  # no half-written one left behind
        assert_bit_identical(reference, final_state(workdirs[kind]))
        with capsys.disabled():  # shown in every run's log, not only on failure
            print(f"\nkill -9 {kind}: {len(kills)} kills, resumed from steps "
                  f"{[newest for newest, _ in kills]}, bit-identical at the end", end="")


def test_sigterm_saves_exits_143_and_resume_is_bit_identical(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    proc = start(tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "metrics.jsonl").exists():  # training has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("descent: stopped by SIGTERM after step ") and "resume" in line
    stopped_at = int(line.split("after step ")[1].split(";")[0])
    manager = checkpoint.open_manager(str(tmp_path), read_only=True)
    assert manager.latest_step() == stopped_at < FINAL_STEP
    finish(tmp_path)
    assert_bit_identical(reference, final_state(tmp_path))


@pytest.mark.parametrize("how", ["truncate a data file", "delete its metadata"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path,
                                                                     how):
    reference, trained = uninterrupted
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)  # the same run, finished
    damage(tmp_path / "checkpoints" / str(FINAL_STEP), how)
    output = finish(tmp_path)
    assert f"warning: the checkpoint at step {FINAL_STEP} cannot be read" in output
    assert "resumed from the checkpoint at step 155" in output
    damaged = os.listdir(tmp_path / "checkpoints-damaged")
    assert len(damaged) == 1 and damaged[0].startswith(f"{FINAL_STEP}-")  # kept, moved aside
    assert_bit_identical(reference, final_state(tmp_path))


def mount_tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): needs root")


@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_a_workdir_that_stops_taking_writes_is_a_clear_error_and_keeps_checkpoints(
        tmp_path, failure):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "20m" if failure == "read-only" else "1200k")
    try:
        workdir = disk / "run"
        proc = start(workdir, "--config.checkpoint.keep=1000")
        if failure == "read-only":
            deadline = time.monotonic() + 120
            while len([n for n in os.listdir(workdir / "checkpoints") if n.isdigit()]
                       if (workdir / "checkpoints").exists() else []) < 2:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            while subprocess.run(["mount", "-o", "remount,ro", str(disk)],
                                 capture_output=True).returncode != 0:  # busy while a file is open
                assert time.monotonic() < deadline
                time.sleep(0.01)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-2000:]
        line = err.strip().splitlines()[-1]
        reason = "Read-only file system" if failure == "read-only" else "No space left on device"
        assert line.startswith("descent: error: could not "), line
        assert reason in line and "intact" in line, line
        manager = checkpoint.open_manager(str(workdir), read_only=True)
        steps = manager.all_steps()
        assert len(steps) >= 2
        if failure == "full":  # the save that failed is named: the one after the last kept
            failed = int(line.split(" while saving step ")[1].split(" ")[0])
            assert failed == max(steps) + 5, line
        for step in steps:  # every checkpoint that was committed reads back whole
            restored = run.restore(str(workdir), step, mesh="data=1")
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.state)))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_restore_across_device_counts_and_strategies(tmp_path):
    config = tiny_config(**{"epochs": 1, "parallel.strategy": "fsdp", "model.width": 128})
    model, dataset = run.build(config)
    summary = fit(config, str(tmp_path), model, dataset)
    sharded = [x.sharding.spec for x in jax.tree.leaves(summary["state"].params)]
    assert any("fsdp" in spec for spec in sharded), "fsdp sharded nothing"
    saved = jax.device_get(summary["state"])
    saved_test = summary["trainer"].evaluate(summary["state"], dataset.eval_batches("test", 256))
    for mesh, strategy, devices in [("data=1", "dp", 1), ("data=2", "dp", 2), ("data=8", "pmap", 8),
                                    ("data=2,fsdp=2,tensor=2", "dp", 8), ("tensor=8", "dp", 8),
                                    ("data=4,tensor=2", "dp", 8)]:
        restored = run.restore(str(tmp_path), "latest", mesh=mesh, strategy=strategy)
        assert restored.trainer.mesh.devices.size == devices
        assert_bit_identical(saved, jax.device_get(restored.state))
        test = restored.trainer.evaluate(restored.state, dataset.eval_batches("test", 256))
        assert test["accuracy"] == saved_test["accuracy"]
        assert test["loss"] == pytest.approx(saved_test["loss"], rel=1e-6)
    probabilities = run.predict(restored, dataset.splits["test"]["inputs"][:5])
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    # ... and goes on training with dp on 2 devices from the fsdp checkpoint
    more = tiny_config(**{"epochs": 2, "model.width": 128, "parallel.mesh": "data=2"})
    model, dataset = run.build(more)
    resumed = fit(more, str(tmp_path), model, dataset)
    assert int(resumed["state"].step) == 78


def test_a_state_replicated_on_8_devices_restores_whatever_handler_wrote_it(tmp_path):
    """Small replicated arrays are copied out of one device when saved (not a slice of each of
    the 8): the saved values are the same, and a checkpoint written by orbax's standard handler
    (replica-parallel, as descent saved before) restores bit-identical through descent's."""
    import orbax.checkpoint as ocp

    config = tiny_config(**{"epochs": 1, "parallel.strategy": "dp", "parallel.mesh": "data=8"})
    model, dataset = run.build(config)
    state = fit(config, str(tmp_path / "run"), model, dataset)["state"]
    assert all(len(x.sharding.device_set) == 8 and x.sharding.is_fully_replicated
               for x in jax.tree.leaves(state.params))
    saved = jax.device_get(state)
    standard = ocp.CheckpointManager(str(tmp_path / "standard" / "checkpoints"),
                                     item_handlers={"state": ocp.StandardCheckpointHandler()})
    standard.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    standard.wait_until_finished()
    standard.close()
    for workdir, step in [(tmp_path / "run", int(state.step)), (tmp_path / "standard", 7)]:
        manager = checkpoint.open_manager(str(workdir), read_only=True)
        restored = checkpoint.restore(manager, step, state, verify=workdir.name == "run")
        assert_bit_identical(saved, jax.device_get(restored))


def test_eval_on_other_hardware_from_the_command_line(tmp_path):
    config = tiny_config(**{"epochs": 1, "parallel.strategy": "fsdp", "model.width": 128})
    run.train_and_evaluate(config, str(tmp_path))
    expected = run.evaluate(str(tmp_path), "latest", "test")
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "eval", "--workdir", str(tmp_path), "--checkpoint",
         "latest"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "XLA_FLAGS": xla_flags()})  # one device
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "eval_test_39.json") as f:
        on_one_device = json.load(f)
    assert on_one_device["accuracy"] == expected["accuracy"]
    assert on_one_device["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_evaluating_from_python_keeps_orbax_routine_read_only_notice_quiet(tmp_path, caplog,
                                                                          monkeypatch):
    from absl import logging as absl_logging
    run.train_and_evaluate(tiny_config(), str(tmp_path), console=False)
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # as in a notebook, where no CLI lowered it
    try:
        with caplog.at_level("WARNING"):
            run.evaluate(str(tmp_path), "latest", "validation")
        assert not [r for r in caplog.records if "read only" in r.getMessage()]
        caplog.set_level(logging.DEBUG, logger="train")  # asked for (--verbose): it is there
        with caplog.at_level("WARNING"):
            run.evaluate(str(tmp_path), "latest", "validation")
        assert [r for r in caplog.records if "Given directory is read only" in r.getMessage()]
    finally:
        absl_logging.set_verbosity(level)


def largest_data_file(step_dir) -> str:
    """The file holding most of a checkpoint's arrays."""
    return max((os.path.join(r, n) for r, _, names in os.walk(step_dir / "state")
                for n in names), key=os.path.getsize)


def damage(step_dir, how):
    """Damages one checkpoint as a crash or a bad disk would."""
    if how == "truncate its config":
        path = step_dir / "config" / "metadata"
        with open(path, "r+b") as f:
            f.truncate(20)
    elif how == "truncate a data file":
        victim = largest_data_file(step_dir)
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:
        os.remove(step_dir / "state" / "_METADATA")


@pytest.mark.parametrize("how", ["truncate its config", "truncate a data file",
                                 "delete its metadata"])
@pytest.mark.parametrize("which", ["latest", "best"])
def test_evaluating_a_damaged_checkpoint_sets_it_aside_and_uses_the_one_before(
        tmp_path, capsys, how, which):
    from experiments.cli import main
    config = tiny_config(**{"epochs": 3, "early_stopping.monitor": "eval_loss"})
    run.train_and_evaluate(config, str(tmp_path), console=False)
    manager = checkpoint.open_manager(str(tmp_path), read_only=True, monitor="eval_loss")
    doomed = checkpoint.resolve_step(manager, which)
    assert doomed == 117  # the loss still falls: the latest is also the best
    damage(tmp_path / "checkpoints" / str(doomed), how)
    capsys.readouterr()

    assert main(["eval", "--workdir", str(tmp_path), "--checkpoint", which]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("checkpoint step 78: test accuracy ")
    assert f"warning: the checkpoint at step 117 cannot be read" in err
    assert [n.split("-")[0] for n in os.listdir(tmp_path / "checkpoints-damaged")] == ["117"]
    assert run.restore(str(tmp_path), "latest").step == 78  # from Python, the same


def test_a_damaged_checkpoint_asked_for_by_step_is_set_aside_and_named(tmp_path, capsys):
    from experiments.cli import main
    run.train_and_evaluate(tiny_config(), str(tmp_path), console=False)
    damage(tmp_path / "checkpoints" / "39", "truncate a data file")
    code = main(["eval", "--workdir", str(tmp_path), "--checkpoint", "39"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("descent: error: the checkpoint at step 39 cannot "
                                            "be read; it was moved to ")
    assert os.listdir(tmp_path / "checkpoints-damaged")[0].startswith("39-")
    assert sorted(checkpoint.open_manager(str(tmp_path), read_only=True).all_steps()) == [78]


def flip_one_bit(path, offset_fraction=0.5):
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(int(size * offset_fraction))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_bit_is_caught_by_the_checksum_and_the_checkpoint_set_aside(tmp_path, capsys):
    from experiments.cli import main
    run.train_and_evaluate(tiny_config(), str(tmp_path), console=False)
    newest = tmp_path / "checkpoints" / "78"
    assert (newest / checkpoint.CHECKSUMS).exists()
    flip_one_bit(largest_data_file(newest))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="does not match its checksum"):
        checkpoint.verify_checksums(checkpoint.open_manager(str(tmp_path), read_only=True), 78)

    capsys.readouterr()
    assert main(["eval", "--workdir", str(tmp_path), "--checkpoint", "latest"]) == 0
    out, err = capsys.readouterr()
    assert "the checkpoint at step 78 cannot be read" in err and "checksum" in err
    assert out.startswith("checkpoint step 39: ")
    assert os.listdir(tmp_path / "checkpoints-damaged")[0].startswith("78-")


def checkpoint_steps(workdir) -> list[int]:
    return sorted(checkpoint.open_manager(str(workdir), read_only=True).all_steps())


def train_in_process(capsys, workdir, *extra) -> str:
    """`descent train` of the tiny MLP (2 epochs: checkpoints 39 and 78) here; its output."""
    from experiments.cli import main
    capsys.readouterr()
    code = main(["train", "--config", "experiments/configs/digits_mlp.py:tiny",
                 "--workdir", str(workdir), *extra])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return out + err


def test_a_checkpoint_without_its_checksum_file_is_set_aside_never_restored_nor_checksummed(
        tmp_path, capsys):
    from experiments.cli import main
    trained = tmp_path / "trained"
    train_in_process(capsys, trained)
    newest = trained / "checkpoints" / "78"
    flip_one_bit(largest_data_file(newest))  # a flip the checksums alone can catch
    os.remove(newest / checkpoint.CHECKSUMS)
    flipped = {str(f): f.read_bytes() for f in newest.rglob("*") if f.is_file()}
    evaluated, resumed = tmp_path / "evaluated", tmp_path / "resumed"
    for copy in (evaluated, resumed):
        shutil.copytree(trained, copy)

    assert main(["eval", "--workdir", str(evaluated), "--checkpoint", "latest"]) == 0
    out, err = capsys.readouterr()
    assert "the checkpoint at step 78 cannot be read" in err and checkpoint.CHECKSUMS in err
    assert out.startswith("checkpoint step 39: ")

    printed = train_in_process(capsys, resumed, "--config.epochs=3")
    assert "the checkpoint at step 78 cannot be read" in printed
    assert "resumed from the checkpoint at step 39 " in printed
    for workdir in (evaluated, resumed):  # moved aside as it was: no checksum written over it
        [aside] = (workdir / "checkpoints-damaged").iterdir()
        assert aside.name.startswith("78-") and not (aside / checkpoint.CHECKSUMS).exists()
        for path, data in flipped.items():
            moved = aside / os.path.relpath(path, newest)
            assert moved.read_bytes() == data
    assert checkpoint_steps(resumed) == [39, 78, 117]  # 78 trained again from 39


def test_the_final_test_scores_the_best_checkpoint_under_the_config_it_was_saved_with(
        tmp_path, capsys):
    train_in_process(capsys, tmp_path)  # relu
    changed = tiny_config(**{"epochs": 3, "model.activation": "sigmoid",
                             "optimizer.learning_rate": 1e-7})
    # a relu net read as sigmoid scores far worse: the best checkpoint stays at 78, saved
    # under relu, and the test must be that of its own relu model
    summary = run.train_and_evaluate(changed, str(tmp_path), console=False,
                                     allow_config_change=True)
    assert summary["test"]["step"] == 78, summary["test"]
    as_saved = run.evaluate(str(tmp_path), 78, "test")  # builds the model from 78's config
    assert run.restore(str(tmp_path), 78).config.model.activation == "relu"
    assert summary["test"]["accuracy"] == as_saved["accuracy"]
    assert summary["test"]["loss"] == pytest.approx(as_saved["loss"], rel=1e-6)


def test_checkpoints_of_two_models_in_one_workdir_are_each_tested_with_their_own(
        tmp_path, capsys):
    workdir, other = tmp_path / "run", tmp_path / "other"
    train_in_process(capsys, workdir)  # width 64: checkpoints 39, 78
    # a wider net trained harder, whose checkpoint at step 30 ranks best by validation
    train_in_process(capsys, other, "--config.model.width=256", "--config.steps=30",
                     "--config.dataset.batch_size=128", "--config.optimizer.learning_rate=3e-3")
    shutil.copytree(other / "checkpoints" / "30", workdir / "checkpoints" / "30")
    summary = run.train_and_evaluate(tiny_config(epochs=3), str(workdir), console=False)
    assert summary["test"]["step"] == 30, summary["test"]
    as_saved = run.evaluate(str(workdir), 30, "test")
    assert run.restore(str(workdir), 30).config.model.width == 256
    assert summary["test"]["accuracy"] == as_saved["accuracy"]


def test_a_checkpoint_set_aside_by_another_command_while_this_one_reads_it(
        tmp_path, capsys, monkeypatch):
    run.train_and_evaluate(tiny_config(), str(tmp_path), console=False)
    flip_one_bit(largest_data_file(tmp_path / "checkpoints" / "78"))
    verify = checkpoint.verify_checksums
    other = checkpoint.open_manager(str(tmp_path), read_only=True)

    def another_eval_moves_it_first(manager, step):
        if step == 78 and (tmp_path / "checkpoints" / "78").exists():
            checkpoint.set_aside(other, 78, checkpoint.DamagedCheckpoint("found by another"))
        return verify(manager, step)

    monkeypatch.setattr(checkpoint, "verify_checksums", another_eval_moves_it_first)
    assert run.evaluate(str(tmp_path), "latest", "test")["step"] == 39
    assert [n.split("-")[0] for n in os.listdir(tmp_path / "checkpoints-damaged")] == ["78"]


def test_checkpoint_folders_not_named_by_ascii_digits_are_ignored_with_a_warning(
        tmp_path, capsys):
    from experiments.cli import main
    train_in_process(capsys, tmp_path)
    for stray in ("١٢٣", "0039"):  # int() reads both as steps; orbax writes neither
        shutil.copytree(tmp_path / "checkpoints" / "39", tmp_path / "checkpoints" / stray)
    printed = train_in_process(capsys, tmp_path, "--config.epochs=3")
    assert "resumed from the checkpoint at step 78 " in printed
    assert r"checkpoints/\u0661\u0662\u0663 is not a checkpoint descent wrote" in printed
    assert main(["eval", "--workdir", str(tmp_path), "--checkpoint", "latest"]) == 0
    assert capsys.readouterr().out.startswith("checkpoint step 117: ")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0039", "117", "39", "78", "١٢٣"]
