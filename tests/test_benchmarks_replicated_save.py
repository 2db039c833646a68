"""The replicated-save benchmark refuses a bad option with one line and exit code 2, before it
builds anything (its run, a ResNet-50 saved 2 x 10 times, is a measurement, not a test)."""
from experiments.benchmarks import replicated_save


def test_a_bad_option_is_refused_in_one_line(capsys):
    assert replicated_save.main(["--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "replicated_save: --repeats must be >= 1, got 0"
