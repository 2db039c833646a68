"""The activations study's finding, in its quick form: sigmoid's gradient vanishes at depth 10."""
import os

from experiments import studies


def test_sigmoid_gradients_vanish_at_depth_10_where_relu_he_trains(tmp_path):
    results = studies.run("activations", str(tmp_path), quick=True, seeds=2)
    runs = {(r["activation"], r["init"]): r for r in results["data"]["runs"]
            if r["optimizer"] == "sgd" and r["depth"] == 10}
    sigmoid = runs["sigmoid", "glorot"]
    print({k: (r["first_layer_grad_at_init"], r["final_val_accuracy"]) for k, r in runs.items()})
    for relu in (runs["relu", "lecun"], runs["relu", "he"]):
        assert max(sigmoid["first_layer_grad_at_init"]) < min(
            relu["first_layer_grad_at_init"]) / 100
    assert min(runs["relu", "he"]["final_val_accuracy"]) >= 0.90
    assert max(sigmoid["final_val_accuracy"]) <= 0.20
    folder = tmp_path / "activations"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(folder / file) > 0
