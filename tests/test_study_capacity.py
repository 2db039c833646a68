"""The capacity study, in its quick form over its 5 seeds: on the 1-D wave, one wide hidden
layer started from zero biases is far from the function, and the same net started from biases
drawn as PyTorch draws them is not (a paired test over the seeds says so); from zero biases its
units' bends leave longer straight stretches; and the largest net is ten times below the
linear model."""
import os

import numpy as np

from experiments import studies


def test_zero_biases_hold_one_wide_layer_back_and_spread_biases_free_it(tmp_path):
    results = studies.run("capacity", str(tmp_path), quick=True)
    wave = results["data"]["functions"]["wave"]
    models = {m["name"]: m for m in wave["models"]}
    widest = models[wave["widest"]]
    zeros, uniform = (np.array(widest["arms"][b]["test_mse"]) for b in ("zeros", "uniform"))
    print(wave["widest"], zeros, uniform, wave["straight"])
    assert len(zeros) == len(uniform) == 5
    # the artefact: every seed's spread-bias net beats its zero-bias twin by a wide margin
    assert widest["uniform_vs_zeros"]["verdict"] == "a" and widest["uniform_vs_zeros"]["p"] < 0.05
    assert np.all(uniform < zeros / 3)
    # its cause, read from the trained weights: from zero biases the units' bends leave a
    # longer stretch of [-1, 1] uncovered, where the net is a straight line
    straight = {b: np.array(wave["straight"][b]) for b in ("zeros", "uniform")}
    assert np.all(straight["uniform"] < straight["zeros"])
    assert wave["straight_uniform_vs_zeros"]["verdict"] == "a"
    # the claim itself, under either initialisation
    linear = {b: np.array(models["linear"]["arms"][b]["test_mse"]) for b in ("zeros", "uniform")}
    for bias in ("zeros", "uniform"):
        assert wave["largest_over_linear"][bias] < 0.1
        assert np.all(np.array(models[wave["largest"]]["arms"][bias]["test_mse"])
                      < linear[bias].min() / 10)
    report = (tmp_path / "capacity" / "report.md").read_text()
    for words in ("## Literature", "Hornik, Stinchcombe & White 1989", "paired t-test over 5 seeds", "rate, zero biases"):
        assert words in report
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "capacity" / file) > 0
