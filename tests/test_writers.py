"""What a run writes at each logging point: JSON lines, TensorBoard, the console, the user's writers."""
import contextlib
import logging
import os
import shutil
import subprocess
import types

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import run
from train.losses import softmax_cross_entropy
from train import report, throughput, writers

from conftest import CONFIGS
from helpers import tensorboard_scalars, tiny_config, trainer_for


def tensorboard_view(workdir) -> dict[str, dict]:
    root = os.path.join(workdir, writers.TENSORBOARD_DIR)
    return {name: tensorboard_scalars(os.path.join(root, name)) for name in os.listdir(root)}


def test_tensorboard_holds_every_record_field_at_its_step(tmp_path):
    # label smoothing makes the objective differ from the loss: both are curves
    config = tiny_config(**{"epochs": 3, "loss.label_smoothing": 0.1})
    run.train_and_evaluate(config, str(tmp_path), console=False)
    records = [r for r in report.read_metrics(str(tmp_path)) if "train_loss" in r]
    view = tensorboard_view(tmp_path)
    assert set(view) == {"train", "validation"}
    train, validation = view["train"], view["validation"]
    for key, tag in [("train_loss", "loss"), ("train_objective", "objective"),
                     ("train_accuracy", "accuracy"), ("learning_rate", "optimizer/learning_rate"),
                     ("grad_norm", "norms/grad_norm"), ("param_norm", "norms/param_norm"),
                     ("epoch", "progress/epoch"), ("examples_per_s", "speed/examples_per_s"),
                     ("steps_per_s", "speed/steps_per_s")]:
        expected = [(r["step"], r[key]) for r in records if key in r]
        assert [s for s, _ in train[tag]] == [s for s, _ in expected], tag
        np.testing.assert_allclose([v for _, v in train[tag]], [v for _, v in expected],
                                   rtol=1e-6, err_msg=tag)
    # train and validation share tags, so TensorBoard draws them in one chart
    assert [s for s, _ in validation["loss"]] == [39, 78, 117]
    assert [s for s, _ in validation["accuracy"]] == [39, 78, 117]
    np.testing.assert_allclose([v for _, v in validation["accuracy"]],
                               [r["eval_accuracy"] for r in records if "eval_accuracy" in r],
                               rtol=1e-6)
    # the compile time, once, at the first step
    assert [s for s, _ in train["speed/compile_s"]] == [1]


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    config = tiny_config(**{"epochs": 2, "log_every": 5})
    run.train_and_evaluate(config, str(tmp_path), console=False)
    # as after a crash between the metrics of steps 40-78 and the checkpoint of step 78
    shutil.rmtree(tmp_path / "checkpoints" / "78")
    before = tensorboard_view(tmp_path)
    assert any(s > 39 for s, _ in before["train"]["loss"])
    run.train_and_evaluate(config, str(tmp_path), console=False)
    view = tensorboard_view(tmp_path)
    records = [r for r in report.read_metrics(str(tmp_path)) if "train_loss" in r]
    for tags in view.values():
        for tag, points in tags.items():
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), f"{tag}: a step shows twice: {steps}"
    # what TensorBoard shows is what the resumed run's metrics say, discarded steps gone
    shown = view["train"]["loss"]
    assert [s for s, _ in shown] == [r["step"] for r in records]
    np.testing.assert_allclose([v for _, v in shown], [r["train_loss"] for r in records], rtol=1e-6)
    assert [s for s, _ in view["train"]["speed/compile_s"]] == [1, 40]  # each start compiles
    for run_dir in view:  # the older event files were replaced, not left beside the new ones
        assert len(os.listdir(tmp_path / writers.TENSORBOARD_DIR / run_dir)) == 1


def test_log_tensorboard_off_writes_no_event_files(tmp_path):
    run.train_and_evaluate(tiny_config(**{"log.tensorboard": False}), str(tmp_path),
                           console=False)
    assert not os.path.exists(tmp_path / writers.TENSORBOARD_DIR)


def test_log_curves_off_draws_no_curves_and_the_command_does_not_name_them(tmp_path, capsys):
    from experiments.cli import main
    tiny = os.path.join(CONFIGS, "digits_mlp.py") + ":tiny"
    alone, group = str(tmp_path / "alone"), str(tmp_path / "group")
    assert main(["train", "--config", tiny, "--workdir", alone, "--config.steps=5",
                 "--config.log.curves=false", "--config.log.tensorboard=false"]) == 0
    assert not {"curves.png", writers.TENSORBOARD_DIR} & set(os.listdir(alone))
    assert f"workdir: {alone}\n" in capsys.readouterr().out  # nothing said of either
    assert main(["train", "--config", tiny, "--workdir", group, "--config.steps=5",
                 "--config.log.curves=false", "--seeds", "0-1"]) == 0
    for name in ("seed_0", "seed_1"):
        assert not os.path.exists(os.path.join(group, name, "curves.png"))
        assert os.path.isdir(os.path.join(group, name, writers.TENSORBOARD_DIR))
    assert f"for the 2 runs below (TensorBoard: tensorboard --logdir {group})" in \
        capsys.readouterr().out


def test_a_users_writers_receive_every_record_the_metrics_file_holds(tmp_path):
    seen = []

    class Collector:
        closed = False

        def write(self, record):
            seen.append(dict(record))

        def close(self):
            Collector.closed = True

    calls = []
    run.train_and_evaluate(tiny_config(), str(tmp_path), console=False,
                           writers=[Collector(), calls.append])
    on_disk = report.read_metrics(str(tmp_path))
    assert seen == on_disk and calls == on_disk and Collector.closed
    with pytest.raises(TypeError, match="a writer must be callable or have write"):
        writers.Writers([42])


def test_records_hold_the_plain_loss_and_the_objective_apart(tmp_path):
    # L2 weight decay (coupled, with sgd): objective = loss + wd / 2 * |w|^2 over the kernels
    wd = 0.01
    config = tiny_config(**{"optimizer.name": "sgd", "optimizer.weight_decay": wd,
                            "model.dropout": 0.0, "optimizer.schedule": "constant",
                            "loss.label_smoothing": 0.0, "epochs": 1})
    summary = run.train_and_evaluate(config, str(tmp_path), console=False)
    first = next(r for r in summary["history"] if "train_loss" in r)
    fresh, _ = trainer_for(config)  # the run's own initial state was donated to its first step
    kernels = [x for x in jax.tree.leaves(jax.device_get(fresh.initial_state.params))
               if x.ndim > 1]
    l2 = 0.5 * wd * sum(float(np.sum(np.square(k.astype(np.float64)))) for k in kernels)
    assert first["step"] == 1
    assert first["train_objective"] - first["train_loss"] == pytest.approx(l2, rel=1e-4)
    # nothing to tell apart: no objective field
    plain = run.train_and_evaluate(tiny_config(**{"loss.label_smoothing": 0.0, "epochs": 1}),
                                   str(tmp_path / "plain"), console=False)
    assert not any("train_objective" in r for r in plain["history"])


def test_the_train_loss_is_the_plain_loss_with_label_smoothing_on(tmp_path):
    # the first step: the logged train loss is the evaluation's loss of the same batch, and the
    # objective the smoothed cross-entropy that the gradient is taken of
    config = tiny_config(**{"steps": 1, "model.dropout": 0.0, "loss.label_smoothing": 0.2})
    summary = run.train_and_evaluate(config, str(tmp_path), console=False)
    first = next(r for r in summary["history"] if "train_loss" in r)
    trainer, dataset = trainer_for(config)  # a fresh initial state: the run's was donated
    batch = next(dataset.train_batches(32, seed=config.seed, epoch=0))
    plain = trainer.evaluate(trainer.initial_state, [{**batch, "mask": np.ones(32, bool)}])
    model = nnx.merge(trainer.graphdef, trainer.initial_state.params,
                      trainer.initial_state.model_state)
    smoothed = softmax_cross_entropy(model(batch["inputs"], train=False), batch["targets"], 0.2)
    assert first["train_loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert first["train_objective"] == pytest.approx(float(np.mean(smoothed)), rel=1e-5)
    assert abs(first["train_objective"] - first["train_loss"]) > 1e-3


def test_console_says_the_compile_time_once_and_a_line_per_evaluation(tmp_path, capsys):
    run.train_and_evaluate(tiny_config(), str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("compiled the train step in ") == 1
    assert "step     39 epoch   1.00  train loss" in out and "validation loss" in out


def fake_device(kind, peak_bytes=None):
    stats = {"peak_bytes_in_use": peak_bytes} if peak_bytes else None
    return types.SimpleNamespace(device_kind=kind, process_index=jax.process_index(),
                                 memory_stats=lambda: stats)


def test_utilisation_is_against_the_devices_peak_and_omitted_for_unknown_devices():
    h100 = [fake_device("NVIDIA H100 80GB HBM3", peak_bytes=5 << 30) for _ in range(8)]
    out = throughput.speed(100, 2.0, 256, 1e12, h100)
    assert out["examples_per_s"] == 100 * 256 / 2.0 and out["steps_per_s"] == 50.0
    assert out["flops_per_s"] == 8 * 50.0 * 1e12
    assert out["mfu"] == pytest.approx(50.0 * 1e12 / 989e12)
    assert out["peak_memory_bytes"] == 5 << 30
    unknown = throughput.speed(100, 2.0, 256, 1e12, [fake_device("Some Accelerator 9000")])
    assert "mfu" not in unknown and "peak_memory_bytes" not in unknown
    assert "flops_per_s" not in throughput.speed(100, 2.0, 256, None, h100)


def test_a_profile_of_the_chosen_steps_lands_in_the_work_directory(tmp_path, caplog):
    config = tiny_config(**{"profile.start_step": 3, "profile.num_steps": 2})
    with caplog.at_level(logging.INFO, logger="train"):
        run.train_and_evaluate(config, str(tmp_path))
    sessions = tmp_path / throughput.PROFILE_DIR / "plugins" / "profile"
    (session,) = os.listdir(sessions)
    files = os.listdir(sessions / session)
    assert any(f.endswith(".xplane.pb") for f in files)  # TensorBoard's profile plugin
    assert "perfetto_trace.json.gz" in files             # https://ui.perfetto.dev
    assert "profiled steps 3-4 into " in caplog.text


def test_the_flop_count_is_the_whole_steps_whatever_the_device_count(tmp_path):
    counted = {}
    for mesh in ("data=1", "data=8"):
        config = tiny_config(**{"parallel.mesh": mesh, "steps": 2})
        run.train_and_evaluate(config, str(tmp_path / mesh), console=False)
        counted[mesh] = next(r["flops_per_step"] for r in report.read_metrics(str(tmp_path / mesh))
                             if "compile_s" in r)
    assert counted["data=8"] == pytest.approx(counted["data=1"], rel=1e-6)
    # the tiny MLP, 64-64-64-10 at batch 32: a multiply-add per weight per example forward,
    # two backward (6 FLOPs), plus the optimizer's and activations' elementwise work
    weights = 64 * 64 + 64 * 64 + 64 * 10
    assert 6 * 32 * weights <= counted["data=1"] <= 1.5 * 6 * 32 * weights


def test_messages_show_as_plain_lines_only_while_the_command_line_asks(capsys):
    from train import messages
    said = logging.getLogger("train.loop")
    said.info("before: not shown")  # importing descent installs no handler
    with messages.shown():
        said.info("resumed from the checkpoint at step 39")
        said.debug("routine detail")
        logging.getLogger("experiments.run").warning("the checkpoint at step 78 cannot be read")
    with messages.shown(verbose=True):
        said.debug("routine detail, asked for")
    said.info("after: not shown")
    out, err = capsys.readouterr()
    assert out == "resumed from the checkpoint at step 39\nroutine detail, asked for\n"
    assert err == "warning: the checkpoint at step 78 cannot be read\n"
    assert not logging.getLogger("train").handlers
    assert logging.getLogger("train").level == logging.NOTSET


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB file system filled to the last byte, with an empty work directory on it; skipped
    where this process may not mount one (it needs root on Linux)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root: " + mounted.stderr.decode().strip())
    try:
        (disk / "run").mkdir()
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield disk / "run"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_refused_before_any_work_naming_the_workdir(full_disk):
    from fuzz import TINY, descent

    result = descent(["train", "--config", TINY, "--workdir", str(full_disk)])
    assert result.code == 2
    assert result.err == (f"descent: error: workdir {str(full_disk)!r} cannot be written (No "
                          f"space left on device); pass a --workdir you can write to\n")
    assert os.listdir(full_disk) == []
