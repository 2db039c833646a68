"""The compile-cache benchmark refuses a bad option with one line and exit code 2, before it
runs anything (its run, 14 training processes, is a measurement, not a test)."""
from experiments.benchmarks import compile_cache


def test_a_bad_option_is_refused_in_one_line(capsys):
    assert compile_cache.main(["--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "compile_cache: --repeats must be >= 1, got 0"
