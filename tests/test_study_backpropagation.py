"""The backpropagation study: jax.grad is the chain rule, to the rounding of float64 that the
central differences it is checked against allow, and one update lowers the loss."""
import os

from experiments import studies


def test_gradients_match_finite_differences_and_hand_backprop_and_one_step_lowers_the_loss(
        tmp_path):
    results = studies.run("backpropagation", str(tmp_path), quick=True, seeds=1)
    d = results["data"]
    print(d["max_relative_error_finite_differences"], d["max_relative_error_by_hand"],
          d["max_relative_difference_sgd_step"])
    assert d["max_relative_error_finite_differences"] < 1e-6
    for check in d["finite_differences"]:  # the differences' own error: eps |L| / h rounding
        assert check["max_abs_error"] < 3 * check["rounding_error_scale"], check
    assert d["max_relative_error_by_hand"] < 1e-6
    for update in d["one_update"]:  # the smallest step lowers the loss, a huge one raises it
        assert update["loss_after"][0] < update["loss_before"]
        assert update["loss_after"][-1] > update["loss_before"]
    assert d["max_relative_difference_sgd_step"] < 1e-6  # the toolkit's SGD step is the formula
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "backpropagation" / file) > 0
