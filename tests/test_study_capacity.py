"""The capacity study, in its quick form: on the 1-D wave, the largest MLP's test MSE is under a
tenth of the linear model's."""
import os

from experiments import studies


def test_the_largest_net_fits_the_wave_ten_times_better_than_a_linear_model(tmp_path):
    results = studies.run("capacity", str(tmp_path), quick=True, seeds=1)
    wave = results["data"]["functions"]["wave"]
    print(wave["linear_test_mse"], wave["largest"], wave["largest_test_mse"])
    assert wave["largest"] == "3x256"
    assert max(wave["largest_test_mse"]) < min(wave["linear_test_mse"]) / 10
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "capacity" / file) > 0
