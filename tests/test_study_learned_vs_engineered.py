"""The learned-vs-engineered study in quick form: on the same MNIST subset and test set, the CNN
beats scikit-learn's decision tree, on raw pixels and on hand-made features alike."""
import os

from experiments import studies


def test_cnn_beats_the_decision_tree(prepared, tmp_path):
    results = studies.run("learned_vs_engineered", str(tmp_path), quick=True, seeds=1,
                          data_dir=prepared, progress=lambda message: None)
    accuracy = {method: values[0] for method, values in results["data"]["accuracy"].items()}
    print("test accuracy: " + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items()))
    cnn = accuracy["CNN, pixels"]
    assert cnn > accuracy["decision tree, pixels"] + 0.05
    assert cnn > accuracy["decision tree, hand features"] + 0.05
    folder = tmp_path / "learned_vs_engineered"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.exists(folder / file), file
    assert len(results["figures"]) == 2
