"""The study machinery: the CLI, what a study leaves, what a rerun overwrites, failed runs."""
import json
import os
import types

import numpy as np
import pytest

from experiments import studies
from experiments.cli import main
from experiments.studies import common


def tiny_study(label="digits", **overrides):
    """A one-run study on the tiny digits MLP, with one figure."""
    def run(study):
        r = study.train(label, study.config("digits_mlp.py", "tiny", **overrides))
        fig, axes = common.new_figure()
        common.band(axes[0, 0], *r.curve("train_loss"), label="train loss")
        study.figure(fig, "loss.png", "the training loss")
        return {"finding": f"test accuracy {r.test['accuracy']:.3f}", "setup": "tiny MLP",
                "tables": [common.Table("t", ["a"], [[1]])], "data": {"test": r.test},
                "literature": [common.Cited("LeCun et al. 1998", "MLPs reach 0.95 on digits",
                                            f"{r.test['accuracy']:.2f}", "agrees")]}
    return types.SimpleNamespace(TITLE="Tiny", CLAIM="Small nets learn.", SEEDS=1, run=run)


def test_a_study_writes_its_report_results_and_figures_and_a_rerun_replaces_only_them(
        tmp_path):
    out = str(tmp_path)
    first = common.Study("tiny", tiny_study(), out, progress=lambda line: None).run()
    folder = tmp_path / "tiny"
    assert first["data"]["test"]["examples"] == 360 and first["figures"] == ["loss.png"]
    report = (folder / "report.md").read_text()
    assert "> Small nets learn." in report and "**Finding.** test accuracy" in report
    assert "Regenerate with `descent study tiny`" in report
    literature = report.split("## Literature")[1]
    assert "| source | what it reports | here | agreement |" in literature
    assert "| LeCun et al. 1998 | MLPs reach 0.95 on digits |" in literature
    assert json.loads((folder / "results.json").read_text())["finding"] == first["finding"]
    (folder / "notes.txt").write_text("mine")  # a user's file beside the study's own
    stale = folder / "runs" / "digits" / "metrics.jsonl"
    assert stale.exists()

    common.Study("tiny", tiny_study(label="again"), out, progress=lambda line: None).run()
    assert (folder / "notes.txt").read_text() == "mine"
    assert not stale.exists()  # the earlier run's folder went with the rerun
    assert sorted(os.listdir(folder / "runs")) == ["again"]


def test_a_failed_run_is_named_with_its_reason(tmp_path):
    bad = tiny_study(label="width-0", **{"model.width": 0})
    with pytest.raises(common.StudyError, match=r"study tiny: run 'width-0' failed: ValueError: "
                                                r"an MLP needs model.depth >= 0 and model.width"):
        common.Study("tiny", bad, str(tmp_path), progress=lambda line: None).run()


def test_the_command_line_runs_a_study_and_refuses_bad_input_in_one_line(tmp_path, capsys,
                                                                        monkeypatch):
    assert main(["study", "list"]) == 0
    listed = capsys.readouterr().out
    for name in studies.STUDIES:
        assert f"{name} " in listed and studies.module(name).CLAIM in listed

    for argv, message in [
        (["study", "dropout"], "unknown study 'dropout'; known: " + ", ".join(studies.STUDIES)),
        (["study", "activations", "--seeds", "0"], "--seeds 0 must be from 1 to"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err

    monkeypatch.setattr(studies, "module", lambda name: tiny_study())
    assert main(["study", "tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[tiny] run 1 digits: test accuracy" in out
    assert out.strip().endswith(f"report: {tmp_path / 'tiny' / 'report.md'}")
    monkeypatch.setattr(studies, "module",
                        lambda name: tiny_study(label="w0", **{"model.width": 0}))
    assert main(["study", "tiny", "--out", str(tmp_path)]) == 2  # the run's cause: bad input
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run 'w0' failed" in err


def test_study_all_runs_every_study_and_indexes_claims_findings_and_figures(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(studies, "STUDIES", ("first", "second"))
    monkeypatch.setattr(studies, "module", lambda name: tiny_study(label=name))
    assert main(["study", "all", "--out", str(tmp_path)]) == 0
    index = (tmp_path / "index.md").read_text()
    for name in ("first", "second"):
        finding = json.loads((tmp_path / name / "results.json").read_text())["finding"]
        assert finding.startswith("test accuracy") and finding in index
        assert f"![Tiny]({name}/loss.png)" in index and f"[Report]({name}/report.md)" in index
    assert index.count("> Small nets learn.") == 2
    assert "at default size" in index and "Regenerate with `descent study all`." in index


def test_runs_that_differ_in_seed_and_rate_train_as_one_program_as_they_would_alone(tmp_path):
    """`train_seeds` and `train_group` (one vmapped program) give each run what `train` gives
    it, to rounding; a run that diverges stops alone, with its step."""
    module = types.SimpleNamespace(TITLE="Group", CLAIM="", SEEDS=2)
    study = common.Study("group", module, str(tmp_path), progress=lambda line: None)

    def config(seed, lr=0.05):
        return study.config("digits_mlp.py", "tiny", seed=seed, **{
            "optimizer.name": "sgd", "optimizer.learning_rate": lr})

    together = study.train_seeds("mlp", config)
    alone = study.train("alone", config(1))
    assert [r.label for r in together] == ["mlp-seed0", "mlp-seed1"]
    assert together[1].test["examples"] == alone.test["examples"] == 360
    assert together[1].test["loss"] == pytest.approx(alone.test["loss"], rel=1e-5)
    steps, losses = together[1].curve("train_loss")
    assert list(steps) == list(alone.curve("train_loss")[0]) and len(steps) > 3
    assert losses == pytest.approx(alone.curve("train_loss")[1], rel=1e-5)
    assert together[0].test["loss"] != together[1].test["loss"]  # two seeds, two runs

    ok, blown = study.train_group(["ok", "blown"], [config(0), config(0, lr=1e5)], test=False)
    assert not ok.diverged and ok.history[-1]["step"] == 78
    assert "became" in blown.diverged and 1 <= blown.diverged_at < 78


def test_a_sweep_whose_best_rate_is_at_its_edge_is_extended_and_flagged(tmp_path):
    """Plain SGD on the tiny digits MLP learns little at 1e-4 and 3e-4: the best is the top of
    the sweep, so `tune` climbs the ladder, one rung at a time, up to its extensions; every
    seed of every rate is trained, and the pick is the lowest mean validation loss."""
    module = types.SimpleNamespace(TITLE="Tune", CLAIM="", SEEDS=2)
    study = common.Study("tune", module, str(tmp_path), progress=lambda line: None)

    def config(lr, seed):
        return study.config("digits_mlp.py", "tiny", seed=seed, **{
            "optimizer.name": "sgd", "optimizer.learning_rate": lr, "eval_every": 26})

    def score(r):
        return r.last("eval_loss")

    tuned = common.tune(study, "mlp", config, (1e-4, 3e-4), score=score,
                                     extensions=1)
    assert sorted(tuned.sweep) == [1e-4, 3e-4, 1e-3]  # one rung added above the edge
    assert tuned.rate == 1e-3 and tuned.at_edge
    assert [r.config.seed for r in tuned.runs] == [0, 1]
    assert all(r.config.optimizer.learning_rate == 1e-3 for r in tuned.runs)
    assert tuned.sweep[1e-3] == pytest.approx(np.mean([score(r) for r in tuned.runs]))
    assert tuned.sweep[1e-4] > tuned.sweep[3e-4] > tuned.sweep[1e-3]
    with pytest.raises(ValueError, match="not consecutive rungs"):
        common.tune(study, "mlp", config, (1e-4, 1e-3), score=score)


def test_a_comparison_says_beats_only_where_the_paired_test_does():
    better = [0.10, 0.20, 0.15, 0.30, 0.25]
    worse = [x + d for x, d in zip(better, (0.05, 0.04, 0.06, 0.05, 0.05))]
    c = common.compare(better, worse)
    assert c.verdict == "a" and c.p < 0.001 and c.difference == pytest.approx(-0.05)
    assert c.words("Adam", "SGD") == f"Adam beats SGD (paired t-test over 5 seeds, p = {c.p:.2g})"
    assert common.compare(worse, better).verdict == "b"
    assert common.compare(better, worse, lower_is_better=False).verdict == "b"  # accuracies
    # the same means, but the seeds disagree on the sign: a tie, however far apart the arms
    noisy = [x + d for x, d in zip(better, (0.3, -0.2, 0.25, -0.15, 0.1))]
    assert common.compare(noisy, better).verdict == "tie"
    assert "tie (paired t-test over 5 seeds" in common.compare(noisy, better).words("A", "B")
    assert common.compare([1.0, 2.0], [3.0, 4.0]).verdict == "tie"  # 2 seeds never decide
    # errors that differ by factors, compared as log10: 10x lower on every seed
    ten_x = common.compare([1e-4, 2e-4, 3e-4], [1e-3, 2.2e-3, 2.9e-3], log=True)
    assert ten_x.verdict == "a" and ten_x.difference == pytest.approx(-1, abs=0.05)
    # a diverged run (NaN) is the worst outcome, not a missing one; with no mean difference
    # to test, a sign test decides: 6 seeds of 6 settle it (p = 2/64), 5 of 5 cannot (2/32)
    diverged = common.compare([np.nan] * 6, [2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
    assert diverged.verdict == "b" and diverged.p == pytest.approx(2 / 64)
    assert common.compare([np.nan] * 5, [2.0, 2.1, 2.2, 2.3, 2.4]).verdict == "tie"
    with pytest.raises(ValueError, match="one value per seed"):
        common.compare([1.0, 2.0, 3.0], [1.0, 2.0])
