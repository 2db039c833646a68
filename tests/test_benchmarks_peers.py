"""The peers benchmark runs end to end in its quick form (a JAX variant and descent's
train_and_evaluate, each in its own process) and refuses a bad option with one line and exit
code 2."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from experiments.benchmarks import peers


def test_quick_run_of_bare_jax_and_descent(tmp_path):
    out = tmp_path / "peers.json"
    done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.peers", "--quick",
                           "--nets", "mlp", "--variants", "bare,fit", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| MLP 784-512-512-10 |" in done.stdout
    assert "matmul peak, jnp.dot:" in done.stdout
    results = json.loads(out.read_text())["results"]["mlp"]
    assert set(results) == {"bare", "fit"}
    for variant, runs in results.items():
        assert [r["recompiles"] for r in runs] == [0], variant  # no retrace after step 1
        assert runs[0]["seconds_per_epoch"] > 0


@pytest.mark.parametrize("args,message", [
    (["--nets", "resnet"], "peers: --nets: unknown 'resnet' (known: mlp, cnn)"),
    (["--repeats", "0"], "peers: --repeats must be >= 1, got 0"),
    (["--steps", "x"], "peers: argument --steps: invalid int value: 'x'"),
])
def test_bad_options_are_refused_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        peers.parse(args)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == message
