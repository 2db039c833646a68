"""The batch-size study in quick form, on MNIST: each batch size at its own rate, a larger batch
needs fewer steps but more epochs to the target, the steps stop falling in proportion to the
batch between the small and the large sizes, and the gradient noise scale B_simple lies between
them; the mini-batch gradient's variance falls as 1/B."""
import os

import numpy as np

from experiments import studies


def test_larger_batches_take_fewer_steps_but_more_epochs_past_the_noise_scale(prepared,
                                                                              tmp_path):
    results = studies.run("batch_size", str(tmp_path), quick=True, seeds=3, data_dir=prepared,
                          progress=lambda message: None)
    d = results["data"]
    sizes = d["batch_sizes"]
    steps = np.array([t["steps_to_target"] for t in d["tuned"]], dtype=float)  # size x seed
    print(f"steps to {d['target']:.0%} per batch size {dict(zip(sizes, steps.tolist()))}, "
          f"B_simple at init {d['b_simple_init']}, variance slopes {d['slope_init']}")
    assert sizes == [32, 256, 2048]
    assert np.all(np.isfinite(steps)), "every seed reaches the target at every batch size"
    epochs = steps * np.array(sizes)[:, None] / d["train_examples"]
    for seed in range(steps.shape[1]):
        s, e = steps[:, seed], epochs[:, seed]
        assert s[0] > s[1] > s[2]  # a larger batch: fewer steps
        assert e[2] > 2 * e[0]  # but the largest needs more than twice the epochs
        # the saving shrinks: 32 to 256 saves a larger factor of steps than 256 to 2048
        assert s[0] / s[1] > s[1] / s[2]
    assert all(sizes[0] < b < sizes[-1] for b in d["b_simple_init"])
    assert all(-1.3 <= slope <= -0.7 for slope in d["slope_init"])
    study_dir = tmp_path / "batch_size"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.isfile(study_dir / file), file
    assert len(results["figures"]) == 3
    assert "## Literature" in (study_dir / "report.md").read_text()
