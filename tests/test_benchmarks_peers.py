"""The peers benchmark runs end to end in its quick form (the JAX-only variants, each in its
own process) and refuses a bad option with one line and exit code 2."""
import json
import subprocess
import sys

from conftest import ROOT


def peers(*args):
    return subprocess.run([sys.executable, "-m", "experiments.benchmarks.peers", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_quick_run_of_the_jax_variants(tmp_path):
    out = tmp_path / "peers.json"
    done = peers("--quick", "--nets", "mlp", "--variants", "bare,nnx,trainer,fit",
                 "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| MLP 784-512-512-10 |" in done.stdout
    assert "matmul peak, jnp.dot:" in done.stdout
    results = json.loads(out.read_text())["results"]["mlp"]
    assert set(results) == {"bare", "nnx", "trainer", "fit"}
    for variant, runs in results.items():
        assert [r["recompiles"] for r in runs] == [0], variant  # no retrace after step 1
        assert runs[0]["seconds_per_epoch"] > 0


def test_bad_options_are_refused_in_one_line():
    for args in (["--nets", "resnet"], ["--repeats", "0"], ["--steps", "x"]):
        done = peers(*args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
