"""Regression end to end: float targets, MSE, MAE in the targets' units, from the CLI and Python."""
import json
import os

import numpy as np
import pytest

from experiments import run
from experiments.cli import main

from conftest import config_path
from helpers import tiny_config

FUNCTION = config_path("function_mlp.py") + ":tiny"


def test_train_eval_and_predict_a_regression_from_the_command_line(tmp_path, capsys):
    workdir = str(tmp_path / "fit")
    assert main(["train", "--config", FUNCTION, "--workdir", workdir,
                 "--config.epochs=20"]) == 0
    out = capsys.readouterr().out
    assert "test mse " in out and ", mae " in out and "accuracy" not in out
    assert main(["eval", "--workdir", workdir, "--checkpoint", "latest"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    step = int(line.split()[2].rstrip(":"))
    saved = json.load(open(os.path.join(workdir, f"eval_test_{step}.json")))
    assert set(saved) >= {"loss", "mae", "examples"} and "accuracy" not in saved
    assert line.startswith(f"checkpoint step {step}: test mse {saved['loss']:.4g}")

    restored = run.restore(workdir, "latest")
    test = restored.dataset.splits["test"]
    predicted = run.predict(restored, test["inputs"])
    assert predicted.shape == test["targets"].shape == (400, 1)
    np.testing.assert_allclose(np.mean((predicted - test["targets"]) ** 2), saved["loss"],
                               rtol=1e-4)
    np.testing.assert_allclose(np.mean(np.abs(predicted - test["targets"])), saved["mae"],
                               rtol=1e-4)
    # 20 epochs bend the fit well below the variance of the curve (the mean predictor's MSE)
    assert saved["loss"] < 0.5 * test["targets"].var()


def test_real_diabetes_beats_predicting_the_mean(tmp_path):
    config = tiny_config("diabetes_mlp.py", epochs=40, eval_every=50,
                         **{"dataset.batch_size": 32, "parallel.mesh": "data=1"})
    summary = run.train_and_evaluate(config, str(tmp_path), console=False)
    dataset = run.build(config)[1]
    train, test = dataset.splits["train"]["targets"], dataset.splits["test"]["targets"]
    mean_mae = float(np.mean(np.abs(test - train.mean())))
    print(f"diabetes test MAE {summary['test']['mae']:.1f} vs {mean_mae:.1f} for the mean")
    assert summary["test"]["mae"] < 0.85 * mean_mae
    assert {"train_mae", "eval_mae"} <= set(summary["history"][-1])


@pytest.mark.parametrize("override,message", [
    ({"early_stopping.monitor": "eval_accuracy"},
     "early_stopping.monitor='eval_accuracy' is not one of eval_loss, eval_mae"),
    ({"early_stopping.monitor": "eval_loss", "loss.name": "cross_entropy"},
     "loss.name='cross_entropy' does not apply to a regression dataset (float targets); use: mse"),
])
def test_classification_settings_on_a_regression_dataset_name_the_fix(tmp_path, override,
                                                                     message):
    config = tiny_config("function_mlp.py", **override)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run.train_and_evaluate(config, str(tmp_path), console=False)
