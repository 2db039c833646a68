"""The batch-size study in quick mode: the mini-batch gradient's variance falls about as 1/B,
and larger batches are processed at more examples per second."""
import os

import numpy as np

from experiments import studies


def test_gradient_variance_falls_as_one_over_b_and_throughput_rises(tmp_path):
    results = studies.run("batch_size", str(tmp_path), quick=True, seeds=1)
    data = results["data"]
    sizes = data["trained_batch_sizes"]
    throughput = [np.mean(x) for x in data["examples_per_s"]]
    print(f"variance slope at init {data['slope_init']} (expected {data['expected_slope']:.2f}), "
          f"examples/s per batch size "
          f"{dict(zip(sizes, np.round(throughput)))}")
    assert data["batch_sizes"][0] == 32 and data["batch_sizes"][-1] == 512
    assert all(-1.3 <= s <= -0.7 for s in data["slope_init"])
    # timings are noisy on a shared machine: the trend, and the ends clearly apart
    slope = np.polyfit(np.log(sizes), np.log(throughput), 1)[0]
    assert slope > 0 and throughput[-1] > 1.5 * throughput[0]
    study_dir = tmp_path / "batch_size"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.isfile(study_dir / file), file
    assert len(results["figures"]) == 3
