"""The remat benchmark refuses a bad option with one line and exit code 2, before it builds
anything (its run, three compiles of a 12-layer GPT's gradient, is a measurement, not a test)."""
from experiments.benchmarks import remat


def test_a_bad_option_is_refused_in_one_line(capsys):
    assert remat.main(["--tokens", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "remat: --layers, --tokens and --batch must be >= 1, got 12, 0 and 4")
