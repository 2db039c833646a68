"""The learned-vs-engineered study in quick form (the configs' tiny nets, 1,000 MNIST images, 3
seeds), checked for the part of the headline docs/studies.md states that holds at every size: the
CNN beats the MLP on the very same pixels (the architecture, not depth, makes the difference)
and the MLP trails the RBF SVM on pixels; no method beats the CNN, which beats every tree and
forest on pixels; hand-made features lift a decision tree, and a random forest on them leaves the
single tree far behind."""
import os

import numpy as np

from experiments import studies


def test_the_convolution_not_depth_and_features_for_trees(prepared, tmp_path):
    results = studies.run("learned_vs_engineered", str(tmp_path), quick=True, seeds=3,
                          data_dir=prepared, progress=lambda message: None)
    data = results["data"]
    for size in data["sizes"]:
        acc = {m: np.array(v) for m, v in data["accuracy"][str(size)].items()}
        print(size, {m: np.round(v, 3).tolist() for m, v in acc.items()})
        assert all(len(v) == 3 for v in acc.values())
        cnn, mlp = acc["CNN, pixels"], acc["MLP, pixels"]
        # seed by seed (the same images for every method): the CNN above the MLP, the SVM on
        # pixels above the MLP
        assert np.all(cnn > mlp + 0.01)
        assert np.all(acc["SVM, pixels"] > mlp)
        # features help the tree; a forest on them is far above one tree
        assert np.all(acc["decision tree, hand features"] > acc["decision tree, pixels"])
        assert np.all(acc["random forest, hand features"]
                      > acc["decision tree, hand features"] + 0.1)
        for tree in ("decision tree, pixels", "decision tree, hand features",
                     "random forest, pixels"):
            assert np.all(cnn > acc[tree])
        verdicts = data["compared"][str(size)]
        assert verdicts["CNN, pixels vs MLP, pixels"]["verdict"] == "a"
        # no method beats the CNN: the SVMs and the forest on hand features come within a few
        # points (the full-size CNN beats them; the quick form's tiny one need not)
        beaten_by = [m for m in acc if m != "CNN, pixels"
                     and verdicts[f"CNN, pixels vs {m}"]["verdict"] == "b"]
        assert not beaten_by, beaten_by
        assert verdicts["MLP, pixels vs SVM, pixels"]["verdict"] == "b"
    report = (tmp_path / "learned_vs_engineered" / "report.md").read_text()
    for words in ("## Literature", "LeCun", "paired t-test over 3 seeds", "not comparable"):
        assert words in report
    folder = tmp_path / "learned_vs_engineered"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(folder / file) > 0
    assert len(results["figures"]) == 2
