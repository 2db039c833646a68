"""The overfitting study, in its quick form: dropout and weight decay narrow the gap between
validation and training loss, and early stopping keeps a checkpoint that tests better."""
import os

from experiments import studies


def test_dropout_and_weight_decay_shrink_the_gap_and_early_stopping_keeps_a_better_checkpoint(
        tmp_path):
    results = studies.run("overfitting", str(tmp_path), quick=True, seeds=1)
    d = results["data"]["regimes"]
    none, dropout, decay, early = (d[r] for r in ("none", "dropout", "weight decay",
                                                  "early stopping"))
    print({r: (v["loss_gap"], v["test_loss"], v["test_accuracy"], v["kept_step"])
           for r, v in d.items()})
    assert min(none["train_accuracy"]) == 1.0  # it memorised the training images
    # the gap: validation loss minus the training loss of the final weights, dropout off
    assert max(dropout["loss_gap"]) < min(none["loss_gap"])
    assert max(decay["loss_gap"]) < min(none["loss_gap"])
    # the unregularised run is tested at its last step; early stopping at the checkpoint it kept
    assert none["kept_step"] == [results["data"]["steps"]]
    assert early["kept_step"][0] < early["stopped_step"][0] < results["data"]["steps"]
    assert max(early["test_loss"]) <= min(none["test_loss"])
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(tmp_path / "overfitting" / file) > 0
