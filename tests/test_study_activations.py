"""The activations study's finding, in its quick form over its 5 seeds, each arm at its own
learning rate: sigmoid's gradient vanishes at depth 10 and the net stays at chance, where
ReLU with He's initialisation trains on every seed."""
import os

from experiments import studies


def test_sigmoid_gradients_vanish_at_depth_10_where_relu_he_trains(tmp_path):
    results = studies.run("activations", str(tmp_path), quick=True)
    runs = {(r["activation"], r["init"]): r for r in results["data"]["runs"]
            if r["optimizer"] == "sgd" and r["depth"] == 10}
    sigmoid = runs["sigmoid", "glorot"]
    print({k: (r["learning_rate"], r["first_layer_grad_at_init"], r["final_val_accuracy"])
           for k, r in runs.items()})
    for relu in (runs["relu", "lecun"], runs["relu", "he"]):
        assert max(sigmoid["first_layer_grad_at_init"]) < min(
            relu["first_layer_grad_at_init"]) / 100
    assert min(runs["relu", "he"]["final_val_accuracy"]) >= 0.90
    assert runs["relu", "he"]["trained"] == 5 and sigmoid["trained"] == 0
    assert max(sigmoid["final_val_accuracy"]) <= 0.20
    # each arm swept its own two rates and ran its seeds at the better one
    assert all(len(r["sweep"]) == 2 and r["learning_rate"] in (0.01, 0.03) for r in runs.values())
    report = (tmp_path / "activations" / "report.md").read_text()
    assert "seeds that train" in report and "learning rate" in report
    folder = tmp_path / "activations"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(folder / file) > 0
