"""The features study in quick form: a linear probe on the last conv block of the trained MNIST
CNN beats the same probe on the raw pixels."""
import json
import os

from experiments import studies


def test_last_block_probe_beats_raw_pixels(prepared, tmp_path):
    results = studies.run("features", str(tmp_path), quick=True, seeds=1, data_dir=prepared,
                          progress=lambda message: None)
    d = results["data"]
    last = d["layers"][-2]  # the last conv block (the final entry is the dense layer)
    print(f"probe test accuracy: pixels {d['pixels']:.3f}, "
          + ", ".join(f"{n} {d['trained'][n][0]:.3f} (untrained {d['untrained'][n][0]:.3f})"
                      for n in d["layers"]))
    assert d["receptive_field_px"] == {"block 1": 4, "block 2": 10, "dense": 28}
    assert d["trained"][last][0] > d["pixels"] + 0.02
    folder = tmp_path / "features"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.exists(folder / file), file
    assert len(results["figures"]) == 3
    assert json.loads((folder / "results.json").read_text())["data"]["pixels"] == d["pixels"]
