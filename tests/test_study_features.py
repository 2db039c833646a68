"""The features study in quick form over its 5 seeds: the untrained net's last conv block beats
random ReLU features of the pixels as wide as it (the architecture, not the width, gives its
lead over the pixels), training adds little at the conv blocks and much at the dense layer,
and the trained net's probes rise from the pixels through both conv blocks. Each comparison is
the paired test the report words, and holds seed by seed."""
import json
import os

import numpy as np

from experiments import studies


def test_conv_blocks_beat_random_features_as_wide_and_training_adds_at_the_dense_layer(
        prepared, tmp_path):
    results = studies.run("features", str(tmp_path), quick=True, data_dir=prepared,
                          progress=lambda message: None)
    d = results["data"]
    scores = {kind: {n: np.array(d[kind][n]) for n in d["layers"]}
              for kind in ("trained", "untrained", "random")}
    print(f"pixels {d['pixels']:.3f}; " + "; ".join(
        f"{kind}: " + ", ".join(f"{n} {v.mean():.3f}" for n, v in by_layer.items())
        for kind, by_layer in scores.items()))
    assert d["receptive_field_px"] == {"block 1": 4, "block 2": 10, "dense": 28}
    # the tiny net's widths: 14x14x8, 7x7x16 and 32 units
    assert d["width"] == {"block 1": 1568, "block 2": 784, "dense": 32}
    assert all(len(v) == 5 for by_layer in scores.values() for v in by_layer.values())
    compared = d["compared"]

    # the control: at the last conv block the untrained net beats as many random dimensions of
    # the pixels, on every seed and by the paired test
    last = d["layers"][-2]
    assert np.all(scores["untrained"][last] > scores["random"][last] + 0.01)
    assert compared[last]["untrained vs random"]["verdict"] == "a"
    assert compared[last]["untrained vs random"]["p"] < 0.05
    # training adds little at block 1 and much at the dense layer
    assert np.all(np.abs(scores["trained"]["block 1"] - scores["untrained"]["block 1"]) < 0.02)
    assert np.all(scores["trained"]["dense"] > scores["untrained"]["dense"] + 0.05)
    assert compared["dense"]["trained vs untrained"]["verdict"] == "a"
    # the trained net's probes rise from the pixels through both conv blocks
    assert np.all(scores["trained"]["block 1"] > d["pixels"] + 0.01)
    assert np.all(scores["trained"][last] > scores["trained"]["block 1"])
    assert d["deeper"]["block 1"]["trained"]["verdict"] == "a"
    assert d["deeper"][last]["trained"]["verdict"] == "a"

    folder = tmp_path / "features"
    report = (folder / "report.md").read_text()
    for words in ("## Literature", "Alain & Bengio 2016", "Jarrett et al. 2009",
                  "Saxe et al. 2011", "paired t-test over 5 seeds", "random ReLU features"):
        assert words in report, words
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.getsize(folder / file) > 0, file
    assert results["figures"][0] == "probes.png"  # the headline figure, with the controls
    assert len(results["figures"]) == 3
    assert json.loads((folder / "results.json").read_text())["data"]["pixels"] == d["pixels"]
