"""The many-runs benchmark refuses a bad option with one line and exit code 2, before any run."""
import os

import pytest

from experiments.benchmarks import many


@pytest.mark.parametrize("args,message", [
    (["--repeats", "0"], "many: --repeats must be >= 1, got 0"),
    (["--epochs", "-1"], "many: --epochs must be >= 1, got -1"),
    (["--width", "-5"], "many: --width must be >= 0 (0: the config's), got -5"),
    (["--checkpoints", "never"], "many: --checkpoints must be every_epoch or last, got 'never'"),
])
def test_a_bad_option_is_refused_in_one_line(args, message, capsys):
    assert many.main(args) == 2
    assert capsys.readouterr().err.strip() == message


def test_last_checkpoint_only_saves_each_run_once_at_its_end(tmp_path):
    configs = many.configs_of(many.GROUPS["5 seeds"], 2, width=16, checkpoints="last")[:1]
    many.sequential(configs, str(tmp_path))
    saved = sorted(os.listdir(tmp_path / "run_0" / "checkpoints"))
    assert saved == ["78"]  # 2 epochs of 39 steps, evaluated at 39 and 78, saved at 78 only
