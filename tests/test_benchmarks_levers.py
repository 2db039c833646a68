"""The scan_layers and chunked_loss benchmarks refuse a bad option with one line and exit code
2, before they build anything (their runs, compiles of 48-layer GPTs and of GPT-2 small's
gradient, are measurements, not tests)."""
from experiments.benchmarks import chunked_loss, scan_layers


def test_a_bad_option_is_refused_in_one_line(capsys):
    assert scan_layers.main(["--depths", "12,x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "scan_layers: --repeats must be >= 1 and --depths positive integers such as 12,48; got "
        "7 and '12,x'")
    assert chunked_loss.main(["--chunks", "0,100"]) == 2
    assert capsys.readouterr().err.strip() == (
        "chunked_loss: --batch, --tokens and --layers must be >= 1 and --chunks divisors of "
        "--tokens (0: all at once); got 16, 1024, 12 and '0,100'")
