"""The training loop end to end on digits: learning, checkpoints, restore, early stopping, NaN."""
import json
import os

import jax
import numpy as np
import pytest

import nets
from experiments import run
from train import checkpoint, report
from train.loop import Diverged

from helpers import tiny_config


# One device, as a user's CPU run: what each activation learns, not how the net is split
# (docs/design.md, section 10).
@pytest.mark.parametrize("activation", sorted(nets.ACTIVATIONS))
def test_four_layer_mlp_learns_digits_with_each_activation(activation, tmp_path):
    config = tiny_config(**{"model.depth": 4, "model.width": 64, "model.activation": activation,
                            "model.dropout": 0.0, "epochs": 12, "optimizer.learning_rate": 3e-3,
                            "loss.label_smoothing": 0.0, "optimizer.schedule": "constant",
                            "parallel.mesh": "data=1"})
    summary = run.train_and_evaluate(config, str(tmp_path))
    evals = [r for r in summary["history"] if "eval_accuracy" in r]
    first, last = evals[0], evals[-1]
    print(f"{activation}: validation accuracy {first['eval_accuracy']:.3f} -> "
          f"{last['eval_accuracy']:.3f}, test {summary['test']['accuracy']:.3f}")
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert summary["test"]["accuracy"] > 0.8


def test_workdir_holds_metrics_curves_checkpoints_and_config(tmp_path):
    config = tiny_config(**{"epochs": 4, "checkpoint.keep": 2, "checkpoint.keep_best": 1})
    summary = run.train_and_evaluate(config, str(tmp_path))
    compiled, *records = report.read_metrics(str(tmp_path))
    assert [r["step"] for r in records if "eval_accuracy" in r] == [39, 78, 117, 156]
    # compilation is a record of its own, once; the first step is logged without throughput
    assert set(compiled) >= {"step", "compile_s"} and compiled["step"] == 1
    assert compiled["compile_s"] > 0 and not any("compile_s" in r for r in records)
    first, rest = records[0], records[1:]
    assert first["step"] == 1 and "examples_per_s" not in first
    assert all(np.isfinite(r["train_loss"]) and r["examples_per_s"] > 0 for r in rest)
    assert all(r["examples_per_s"] == pytest.approx(32 * r["steps_per_s"]) for r in rest)
    assert all(r["grad_norm"] > 0 and r["param_norm"] > 0 for r in records)
    # the schedule's value at each logged step: warmup_cosine from 0 over 5 steps to 3e-3
    assert first["learning_rate"] == 0.0
    assert max(r["learning_rate"] for r in records) <= 3e-3 < 1.01 * max(
        r["learning_rate"] for r in records if r["step"] <= 10)
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    manager = checkpoint.open_manager(str(tmp_path), read_only=True)
    best_step = max((r for r in records if "eval_accuracy" in r),
                    key=lambda r: (r["eval_accuracy"], r["step"]))["step"]
    assert summary["best_step"] == best_step
    # the latest two, plus the best if it is older
    assert set(manager.all_steps()) == {117, 156} | {best_step}
    assert checkpoint.saved_config(manager, 156) == json.loads(json.dumps(config.to_dict()))
    assert os.path.exists(tmp_path / f"eval_test_{best_step}.json")


def test_a_step_budget_can_end_mid_epoch(tmp_path):
    summary = run.train_and_evaluate(tiny_config(steps=50, eval_every=20), str(tmp_path))
    assert int(summary["state"].step) == 50
    assert [r["step"] for r in summary["history"] if "eval_accuracy" in r] == [20, 40, 50]
    assert summary["latest_step"] == 50


def test_save_restore_evaluate_gives_the_same_metrics(tmp_path):
    config = tiny_config("digits_cnn.py", **{"epochs": 2})
    model, dataset = run.build(config)
    from train.loop import fit
    summary = fit(config, str(tmp_path), model, dataset)
    before = summary["trainer"].evaluate(summary["state"], dataset.eval_batches("test", 256))
    restored = run.restore(str(tmp_path), "latest")
    assert restored.step == int(summary["state"].step)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.state),
                 jax.device_get(summary["state"]))
    after = run.evaluate(str(tmp_path), "latest", "test")
    assert (after["loss"], after["accuracy"], after["examples"]) == (
        before["loss"], before["accuracy"], before["examples"])


def test_early_stopping_stops_after_patience_evaluations(tmp_path):
    config = tiny_config(**{"epochs": 20, "optimizer.learning_rate": 1e-12,  # too small to
                            "early_stopping.patience": 2})                 # move float32 weights
    summary = run.train_and_evaluate(config, str(tmp_path))
    assert summary["stop_reason"].startswith("early stopping")
    evals = [r for r in summary["history"] if "eval_accuracy" in r]
    assert len(evals) == 3  # the first sets the best; two more without improvement stop it
    assert int(summary["state"].step) == 3 * 39


def diverges_at(excinfo):
    """The step a Diverged error names, and the step of the checkpoint it says it kept."""
    import re
    named, kept = re.search(r"became \S+ at step (\d+); stopped, and the last good checkpoint "
                            r"\(step (\d+)\) is kept", str(excinfo.value)).groups()
    return int(named), int(kept)


def test_nan_stops_with_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr is 0 at step 1 (warmup), then astronomically large: a checkpoint every step, then NaN.
    config = tiny_config(**{"optimizer.learning_rate": 1e30, "optimizer.schedule": "warmup_cosine",
                            "optimizer.warmup_steps": 20, "checkpoint.every": 1, "epochs": 1})
    with pytest.raises(Diverged) as excinfo:
        run.train_and_evaluate(config, str(tmp_path))
    named, kept = diverges_at(excinfo)
    assert 1 <= kept < named <= 4
    restored = run.restore(str(tmp_path), "latest")
    assert restored.step == kept
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.state)))


def checkpoint_files(workdir):
    files = {}
    for root, _, names in os.walk(os.path.join(workdir, "checkpoints")):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.join(root, name)] = f.read()
    return files


def test_a_run_in_a_used_workdir_resumes_and_a_diverging_one_keeps_its_checkpoints(tmp_path):
    run.train_and_evaluate(tiny_config(**{"epochs": 2}), str(tmp_path))
    before = checkpoint_files(str(tmp_path))
    assert checkpoint.open_manager(str(tmp_path), read_only=True).latest_step() == 78
    diverging = tiny_config(**{"epochs": 4, "optimizer.learning_rate": 1e30})
    with pytest.raises(Diverged) as excinfo:
        run.train_and_evaluate(diverging, str(tmp_path), allow_config_change=True)
    named, kept = diverges_at(excinfo)
    assert kept == 78 and 78 < named < 117
    assert checkpoint_files(str(tmp_path)) == before  # every byte as it was
    resumed = run.train_and_evaluate(tiny_config(**{"epochs": 3}), str(tmp_path))
    assert int(resumed["state"].step) == 117
    assert [r["step"] for r in resumed["history"] if "eval_accuracy" in r] == [39, 78, 117]


def test_layer_gradient_norms_are_logged_and_add_up_to_the_global_norm(tmp_path):
    config = tiny_config(**{"model.depth": 3, "log.layer_grad_norms": True, "epochs": 1})
    summary = run.train_and_evaluate(config, str(tmp_path), console=False)
    paths = {f"grad_norm/{p}" for p in ("hidden/0/kernel", "hidden/0/bias", "hidden/1/kernel",
                                        "hidden/2/kernel", "head/kernel", "head/bias")}
    trained = [r for r in summary["history"] if "train_loss" in r]
    first = trained[0]
    assert first["step"] == 1 and paths <= set(first)
    # at a single step the per-array norms are exact parts of the global norm
    layers = [v for k, v in first.items() if k.startswith("grad_norm/")]
    assert len(layers) == 8
    np.testing.assert_allclose(np.sqrt(np.sum(np.square(layers))), first["grad_norm"], rtol=1e-4)
    assert all(paths <= set(r) for r in report.read_metrics(str(tmp_path)) if "train_loss" in r)


@pytest.mark.parametrize("change,message", [
    ({"early_stopping.monitor": "eval_mae"}, "early_stopping.monitor='eval_mae' is not one of"),
    ({"checkpoint.keep": 0}, "checkpoint.keep=0 and keep_best=1: keep at least 1"),
    ({"eval_split": "holdout"}, "digits has no split 'holdout'"),
    ({"dataset.batch_size": 30, "parallel.mesh": "data=8"}, "batch_size"),
])
def test_a_config_that_fails_a_check_leaves_no_work_directory(tmp_path, change, message):
    from train.loop import fit
    config = tiny_config(**change)
    model, dataset = run.build(config, deferred=True)
    with pytest.raises(ValueError, match=message):
        fit(config, str(tmp_path / "run"), model, dataset)
    assert not (tmp_path / "run").exists()


def test_a_bad_test_split_is_named_before_the_work_directory_is_made(tmp_path):
    with pytest.raises(ValueError, match="digits has no split 'holdout'"):
        run.train_and_evaluate(tiny_config(test_split="holdout"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_an_older_checkpoint_is_evaluated_as_the_model_it_was_trained_as(tmp_path):
    """A run resumed with another activation: its checkpoint from before the change is still
    the model with the activation it was trained with, and scores what its record says."""
    workdir = str(tmp_path)
    run.train_and_evaluate(tiny_config(epochs=1), workdir, console=False)
    run.train_and_evaluate(tiny_config(**{"epochs": 2, "model.activation": "tanh"}), workdir,
                           console=False, allow_config_change=True)
    recorded = next(r for r in report.read_metrics(workdir)
                    if r["step"] == 39 and "eval_loss" in r)
    assert run.restore(workdir, 39).config.model.activation == "relu"
    assert run.restore(workdir, 78).config.model.activation == "tanh"
    older = run.evaluate(workdir, 39, "validation")
    assert older["loss"] == pytest.approx(recorded["eval_loss"], rel=1e-5)
    assert older["accuracy"] == pytest.approx(recorded["eval_accuracy"])
