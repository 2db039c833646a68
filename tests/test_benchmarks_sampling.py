"""The sampling benchmark refuses a bad option with one line and exit code 2, before it builds
anything (its run, two GPTs sampled 2 x 8 times, is a measurement, not a test)."""
from experiments.benchmarks import sampling


def test_a_bad_option_is_refused_in_one_line(capsys):
    assert sampling.main(["--tokens", "256"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sampling: --repeats must be >= 1 and --tokens from 1 to 255, got 7 and 256")
