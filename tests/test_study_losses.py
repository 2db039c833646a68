"""The losses study, in its quick form: the toolkit's binary cross-entropy is the article's
formula, cross-entropy trains the digits classifier to 95 % in fewer steps than MSE (each at
its best plain-SGD rate), and MSE regression beats predicting the mean."""
import os

from experiments import studies


def test_bce_is_the_formula_and_cross_entropy_reaches_the_target_before_mse(tmp_path):
    results = studies.run("losses", str(tmp_path), quick=True, seeds=1)
    d = results["data"]
    best = d["best"]["sgd"]
    ce, mse = (best[loss]["steps_to"]["0.95"][0] for loss in ("cross_entropy", "mse"))
    regression = d["regression"]["models"]["MLP"]["test_mse"][0]
    print(d["bce"]["max_relative_error"], {"cross_entropy": ce, "mse": mse},
          regression, d["regression"]["mean_predictor_mse"])
    assert d["bce"]["max_relative_error"] < 1e-12  # float64
    assert d["bce"]["wrong_confident"] > 4 and d["bce"]["right_confident"] < 0.011
    assert ce is not None and (mse is None or ce < mse)
    assert regression < d["regression"]["mean_predictor_mse"]
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "losses" / file) > 0
