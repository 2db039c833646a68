"""The scale study in its small form: the zoo's counts beside the article's, and GPT sizes."""
import os

from experiments import studies


def test_resnet152_has_the_articles_60_million_parameters_and_gpts_train(prepared, tmp_path):
    results = studies.run("scale", str(tmp_path), quick=True, seeds=1, data_dir=prepared)
    d = results["data"]
    zoo = {r["name"]: r for r in d["zoo"]}
    assert abs(zoo["resnet152"]["parameters"] / d["article_resnet152"] - 1) < 0.01
    # a forward pass of ResNet-152 at 224x224 is ~11.3 G multiply-adds: ~22.6 GFLOP
    assert 20e9 < zoo["resnet152"]["forward_flops"] < 25e9
    small, large = d["gpts"]
    print(small["validation_loss"], large["validation_loss"])
    assert small["parameters"] < large["parameters"]
    assert max(small["validation_loss"] + large["validation_loss"]) < 4.17  # ln 65: uniform
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "scale" / file) > 0
