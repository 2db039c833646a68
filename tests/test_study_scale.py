"""The scale study in its small form: the zoo's counts beside the article's, and GPT sizes."""
import os

from experiments import studies


def test_resnet152_has_60_million_parameters_and_a_larger_gpt_does_better(prepared, tmp_path):
    results = studies.run("scale", str(tmp_path), quick=True, seeds=2, data_dir=prepared)
    d = results["data"]
    zoo = {r["name"]: r for r in d["zoo"]}
    assert abs(zoo["resnet152"]["parameters"] / d["article_resnet152"] - 1) < 0.01
    # a forward pass of ResNet-152 at 224x224 is ~11.3 G multiply-adds: ~22.6 GFLOP
    assert 20e9 < zoo["resnet152"]["forward_flops"] < 25e9
    small, large = d["gpts"]
    print(small["validation_loss"], large["validation_loss"], d["alphas"])
    assert small["parameters"] < large["parameters"]
    assert max(small["validation_loss"] + large["validation_loss"]) < 4.17  # ln 65: uniform
    # what the docs say of the GPTs: at a fixed budget of steps a larger GPT reaches a lower
    # validation loss, on every seed (a positive alpha of L ~ N^-alpha)
    assert all(b < a for a, b in zip(small["validation_loss"], large["validation_loss"]))
    assert min(d["alphas"]) > 0
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "scale" / file) > 0
