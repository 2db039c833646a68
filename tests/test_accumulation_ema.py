"""Gradient accumulation is the big batch's update; the moving average of the weights is kept,
checkpointed, restored on any topology, and evaluated beside the raw weights."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import run
from experiments.cli import main
from train import checkpoint, report
from train.loop import fit

from conftest import config_path
from helpers import tensorboard_scalars, tiny_config

# No dropout: micro-batches draw their own masks, so only without it is the big batch's update
# the same function of the data.
PLAIN = {"model.dropout": 0.0, "dataset.batch_size": 64}


def final_params(summary):
    return jax.device_get(summary["state"].params)


@pytest.mark.parametrize("strategy", ["dp", "pmap"])
def test_accumulated_micro_batches_give_the_big_batchs_update(tmp_path, strategy):
    # 4 micro-batches of 16 (2 per device) against one batch of 64, 2 epochs of 28 updates
    # with warmup and cosine decay: the schedule counts updates
    big = run.train_and_evaluate(tiny_config(**PLAIN), str(tmp_path / "big"), console=False)
    small = run.train_and_evaluate(
        tiny_config(**PLAIN, **{"optimizer.accumulate_steps": 4, "parallel.strategy": strategy}),
        str(tmp_path / "accumulated"), console=False)
    assert int(small["state"].step) == int(big["state"].step) == 2 * (1257 // 64)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 final_params(small), final_params(big))
    rates = lambda s: [r["learning_rate"] for r in s["history"] if "learning_rate" in r]
    assert rates(small) == rates(big)
    losses = lambda s: [r["train_loss"] for r in s["history"] if "train_loss" in r]
    np.testing.assert_allclose(losses(small), losses(big), rtol=1e-5)


def test_an_accumulating_run_resumes_exactly(tmp_path):
    # with dropout: each micro-batch's masks are a function of (seed, step, micro-batch)
    config = tiny_config(**{**PLAIN, "optimizer.accumulate_steps": 2, "model.dropout": 0.2,
                            "checkpoint.every": 5, "checkpoint.keep": 100})
    whole = final_params(run.train_and_evaluate(config, str(tmp_path), console=False))
    for step in (25, 30, 35, 38):  # as if killed after step 20, in the second epoch
        shutil.rmtree(tmp_path / "checkpoints" / str(step))
    resumed = run.train_and_evaluate(config, str(tmp_path), console=False)
    assert resumed["history"][0]["step"] == 1 and any(
        r.get("compile_s") and r["step"] == 21 for r in resumed["history"])
    jax.tree.map(np.testing.assert_array_equal, final_params(resumed), whole)


def test_a_batch_that_does_not_split_is_refused_with_the_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"dataset.batch_size=64 does not split into "
                                         r"optimizer.accumulate_steps=3 micro-batches that divide "
                                         r"over 8 devices \(it must be a multiple of 3 x 8 = 24\);"
                                         r" use 48 or 72"):
        run.train_and_evaluate(tiny_config(**PLAIN, **{"optimizer.accumulate_steps": 3}),
                               str(tmp_path), console=False)
    assert not os.path.exists(tmp_path / "checkpoints")


EMA = {"optimizer.ema_decay": 0.9, "optimizer.schedule": "constant", "model.dropout": 0.0}


def test_the_moving_average_is_the_bias_corrected_average_of_the_parameters(tmp_path):
    d = 0.9
    config = tiny_config(**EMA, **{"steps": 6, "checkpoint.every": 1, "checkpoint.keep": 10})
    summary = fit(config, str(tmp_path), *run.build(config), console=False)
    manager = checkpoint.open_manager(str(tmp_path), read_only=True)
    like = summary["trainer"].initial_state
    states = [jax.device_get(checkpoint.restore(manager, s, like)) for s in range(1, 7)]
    leaves = [jax.tree.leaves(s.params) for s in states]
    expected = [sum(d ** (6 - i) * (1 - d) * p[j] for i, p in enumerate(leaves, 1)) / (1 - d ** 6)
                for j in range(len(leaves[0]))]
    for got, want in zip(jax.tree.leaves(states[-1].ema_params), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_moving_average_survives_save_and_restore_on_another_device_count(tmp_path):
    config = tiny_config(**EMA, **{"parallel.strategy": "fsdp", "model.width": 512,
                                   "early_stopping.monitor": "eval_ema_accuracy"})
    summary = run.train_and_evaluate(config, str(tmp_path), console=False)
    saved = jax.device_get(summary["state"].ema_params)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(saved), jax.tree.leaves(final_params(summary))))
    restored = run.restore(str(tmp_path), "latest", mesh="data=1", strategy="dp")
    assert restored.weights == "ema"  # what a run ranked by its moving average scores
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.state.ema_params), saved)
    # every evaluation scored both, and the records hold both
    last = summary["history"][-1]
    assert {"eval_accuracy", "eval_loss", "eval_ema_accuracy", "eval_ema_loss"} <= set(last)
    again = run.evaluate(str(tmp_path), "latest", "validation")
    assert again["weights"] == "ema"
    assert again["accuracy"] == pytest.approx(last["eval_ema_accuracy"])
    raw = run.evaluate(str(tmp_path), "latest", "validation", weights="raw")
    assert raw["accuracy"] == pytest.approx(last["eval_accuracy"])
    # the final test scored both, each in its own file
    assert set(summary["tests"]) == {"raw", "ema"} and summary["test"]["weights"] == "ema"
    step = summary["test"]["step"]
    with open(tmp_path / f"eval_test_{step}_ema.json") as f:
        assert json.load(f)["accuracy"] == summary["tests"]["ema"]["accuracy"]
    ema_view = tensorboard_scalars(tmp_path / "tensorboard" / "validation_ema")
    assert [s for s, _ in ema_view["accuracy"]] == [39, 78]
    probabilities = run.predict(restored, restored.dataset.splits["validation"]["inputs"])
    accuracy = np.mean(probabilities.argmax(-1) == restored.dataset.splits["validation"]["targets"])
    assert accuracy == pytest.approx(last["eval_ema_accuracy"])


def test_eval_scores_either_weights_from_the_command_line(tmp_path, capsys):
    workdir = str(tmp_path)
    assert main(["train", "--config", config_path("digits_mlp.py") + ":tiny", "--workdir",
                 workdir, "--config.optimizer.ema_decay=0.9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("moving average of the weights at the same step: test accuracy")
    assert out[-1].startswith("best checkpoint: step") and out[-1].endswith("(raw weights)")
    assert main(["eval", "--workdir", workdir, "--weights", "ema"]) == 0
    assert capsys.readouterr().out.strip().endswith("(moving average of the weights)")
    assert main(["eval", "--workdir", workdir]) == 0  # ranked by raw accuracy: raw by default
    assert "moving average" not in capsys.readouterr().out
    names = sorted(n for n in os.listdir(workdir) if n.startswith("eval_"))
    assert any(n.endswith("_ema.json") for n in names) and len(names) == 2
    assert all("train_loss" in r or "compile_s" in r for r in report.read_metrics(workdir))
