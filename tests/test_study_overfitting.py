"""The overfitting study, in its quick form over 3 seeds: the MLP fits 100 digits whose labels
were shuffled as completely as the true ones while scoring chance on validation; the gap between
validation and training loss shrinks, and test accuracy rises, as the training set grows from
100 to 1,000 images; at 100 images dropout and weight decay narrow that gap and lower the test
loss in every seed, while no regime moves the test accuracy by more than a few images."""
import os

import numpy as np

from experiments import studies

SEEDS = 3


def test_random_labels_are_memorised_and_more_data_closes_the_gap(tmp_path):
    results = studies.run("overfitting", str(tmp_path), quick=True, seeds=SEEDS)
    d = results["data"]
    regimes = d["regimes"]
    none, shuffled = regimes["none"], regimes["random labels"]
    small, large = d["sizes"]["none"]["100"], d["sizes"]["none"]["1000"]
    print({arm: (v["train_loss"], v["val_accuracy"], v["loss_gap"], v["test_loss"])
           for arm, v in regimes.items()}, large["loss_gap"], large["test_accuracy"])
    assert len(none["loss_gap"]) == SEEDS

    # memorised: every seed fits all 100 true labels, and all 100 shuffled ones, to a training
    # loss far below chance's ln 10 = 2.3, while only the true labels carry to validation
    assert min(none["train_accuracy"]) == 1.0 and min(shuffled["train_accuracy"]) == 1.0
    assert max(none["train_loss"]) < 0.05 and max(shuffled["train_loss"]) < 0.1
    assert max(shuffled["val_accuracy"]) < 0.2 < 0.8 < min(none["val_accuracy"])

    # more data: in every seed the gap at 1,000 images is under half that at 100, and the test
    # accuracy of every seed at 1,000 is above that of every seed at 100
    assert small["loss_gap"] == none["loss_gap"]
    assert np.all(np.array(large["loss_gap"]) < np.array(small["loss_gap"]) / 2)
    assert min(large["test_accuracy"]) > max(small["test_accuracy"])

    # the regularisers at 100 images: seed against seed, dropout and weight decay narrow the
    # gap and lower the test loss, yet no regime moves the mean test accuracy by 7 of the 360
    # test images
    for regime in ("dropout", "weight decay"):
        assert np.all(np.array(regimes[regime]["loss_gap"]) < np.array(none["loss_gap"]))
        assert np.all(np.array(regimes[regime]["test_loss"]) < np.array(none["test_loss"]))
    for regime in ("dropout", "weight decay", "early stopping"):
        assert abs(np.mean(regimes[regime]["test_accuracy"]) - np.mean(none["test_accuracy"])
                   ) < 7 / 360
    early = regimes["early stopping"]
    assert all(kept < stopped <= d["steps"]
               for kept, stopped in zip(early["kept_step"], early["stopped_step"]))

    report = (tmp_path / "overfitting" / "report.md").read_text()
    for words in ("## Literature", "Zhang et al. 2017", "Srivastava et al. 2014",
                  f"paired t-test over {SEEDS} seeds", "random labels"):
        assert words in report
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "overfitting" / file) > 0
