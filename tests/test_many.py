"""Many runs as one vmapped program (`run.train_many`, `descent train --seeds/--sweep`): each
run's records, checkpoints and test equal the same run trained alone."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import run
from experiments.cli import main
from train import many, report

from conftest import config_path
from helpers import cifar_shaped, tiny_config

TINY = config_path("digits_mlp.py") + ":tiny"
SEEDS, RATES = (0, 1), (0.003, 0.01)
# Batched matmuls may sum in another order than the run alone: rounding, never more.
TOLERANCE = 1e-6


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """The group trained from the command line, and each of its runs trained alone."""
    root = tmp_path_factory.mktemp("many")
    workdir = str(root / "group")
    code = main(["train", "--config", TINY, "--workdir", workdir, "--seeds", "0-1",
                 "--sweep", f"optimizer.learning_rate={RATES[0]},{RATES[1]}"])
    assert code == 0
    alone = {}
    for name, config in run.variants(tiny_config(), SEEDS, RATES).items():
        config.parallel.mesh = "data=1"
        alone[name] = (str(root / "alone" / name),
                       run.train_and_evaluate(config, str(root / "alone" / name),
                                              console=False))
    return workdir, alone


def numbers(record: dict) -> dict:
    """A record's fields that are the run's numbers (not its clock or speed)."""
    return {k: v for k, v in record.items()
            if k not in ("time", "compile_s", "examples_per_s", "steps_per_s", "flops_per_s",
                         "flops_per_step", "peak_memory_bytes", "mfu")}


def test_every_run_equals_the_same_run_trained_alone(group):
    workdir, alone = group
    assert sorted(os.listdir(workdir)) == sorted(alone)
    worst = {"metrics": 0.0, "params": 0.0}
    for name, (alone_dir, summary) in alone.items():
        mine = os.path.join(workdir, name)
        ours, theirs = report.read_metrics(mine), report.read_metrics(alone_dir)
        assert [sorted(r) for r in ours] == [sorted(r) for r in theirs]  # same steps, fields
        for a, b in zip(ours, theirs):
            for k, v in numbers(b).items():
                assert a[k] == pytest.approx(v, rel=TOLERANCE, abs=TOLERANCE), (name, k)
                worst["metrics"] = max(worst["metrics"], abs(a[k] - v) / max(1, abs(v)))
        assert sorted(os.listdir(os.path.join(mine, "checkpoints"))) == sorted(
            os.listdir(os.path.join(alone_dir, "checkpoints")))
        restored = run.restore(mine, "latest")  # an ordinary checkpoint: restored as any other
        for a, b in zip(leaves(restored.state), leaves(summary["state"])):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)
            worst["params"] = max(worst["params"], float(np.max(np.abs(a - b))))
        test = summary["test"]
        saved = json.load(open(os.path.join(mine, f"eval_test_{test['step']}.json")))
        assert saved["examples"] == test["examples"]
        assert saved["accuracy"] == pytest.approx(test["accuracy"], abs=TOLERANCE)
        assert saved["loss"] == pytest.approx(test["loss"], abs=TOLERANCE)
        assert os.path.exists(os.path.join(mine, "curves.png"))
    print(f"largest difference from the runs alone: {worst}")


def test_the_command_prints_a_line_per_run_and_eval_reads_a_run(group, capsys):
    workdir, _ = group
    assert main(["eval", "--workdir", os.path.join(workdir, "seed_1-learning_rate_0.01"),
                 "--checkpoint", "latest"]) == 0
    assert capsys.readouterr().out.startswith("checkpoint step 78: test accuracy ")


def test_seeds_alone_name_the_workdirs_by_seed():
    named = run.variants(tiny_config(), seeds=[3, 5])
    assert list(named) == ["seed_3", "seed_5"]
    assert [c.seed for c in named.values()] == [3, 5]


def test_resuming_all_runs_from_one_step_equals_training_them_at_once(group, tmp_path):
    workdir, _ = group
    named = run.variants(tiny_config(), SEEDS, RATES)  # the same group: the same program
    dirs = []
    for name in named:  # as if killed after the checkpoint of step 39
        dirs.append(shutil.copytree(os.path.join(workdir, name), str(tmp_path / name)))
        shutil.rmtree(os.path.join(dirs[-1], "checkpoints", "78"))
    summaries = run.train_many(list(named.values()), dirs, console=False)
    for name, summary, resumed in zip(named, summaries, dirs):
        whole = os.path.join(workdir, name)
        for a, b in zip(leaves(summary["state"]), leaves(run.restore(whole, "latest").state)):
            np.testing.assert_array_equal(a, b)
        assert [numbers(r) for r in report.read_metrics(resumed) if "train_loss" in r] == [
            numbers(r) for r in report.read_metrics(whole) if "train_loss" in r]


def test_a_group_keeps_checkpoints_another_group_saved_and_refuses_naming_them(group,
                                                                            tmp_path):
    """A run of another group beside a fresh one: the step both hold is 0, and the other
    group's checkpoints, which this group would not write again, are kept and named."""
    workdir, _ = group
    configs = list(run.variants(tiny_config(), SEEDS).values())
    dirs = [os.path.join(workdir, "seed_0-learning_rate_0.003"), str(tmp_path / "fresh")]
    before = sorted(os.listdir(os.path.join(dirs[0], "checkpoints")))
    with pytest.raises(ValueError, match=r"checkpoints/39 is newer than step 0, the newest every "
                                         r"run of this group holds, and was not saved by this "
                                         r"group of 2 runs"):
        run.train_many(configs, dirs, console=False)
    assert sorted(os.listdir(os.path.join(dirs[0], "checkpoints"))) == before


def test_runs_of_a_group_with_no_step_in_common_are_refused_naming_each_runs_steps(group,
                                                                                  tmp_path):
    workdir, _ = group
    named = run.variants(tiny_config(), SEEDS, RATES)
    dirs = [shutil.copytree(os.path.join(workdir, name), str(tmp_path / name)) for name in named]
    shutil.rmtree(os.path.join(dirs[0], "checkpoints", "78"))
    shutil.rmtree(os.path.join(dirs[1], "checkpoints", "39"))
    with pytest.raises(ValueError, match=r"hold no checkpoint at a step common to all \(.*"
                                         r"seed_0-learning_rate_0.003: 39; .*"
                                         r"seed_0-learning_rate_0.01: 78; "):
        run.train_many(list(named.values()), dirs, console=False)
    assert sorted(os.listdir(os.path.join(dirs[1], "checkpoints"))) == ["78"]


@pytest.mark.parametrize("change,message", [
    ({"model.width": 32, "dataset.batch_size": 16},
     "may differ only in seed and optimizer.learning_rate; these differ too: "
     "dataset.batch_size, model.width"),
    ({"optimizer.momentum": 0.5}, "these differ too: optimizer.momentum"),
    ({}, "runs 0 and 1 are the same run (seed 0, learning rate 0.003)"),
])
def test_configs_that_cannot_share_a_program_are_refused_naming_the_keys(change, message):
    other = tiny_config(**change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        many.check_group([tiny_config(), other])


def test_a_diverging_run_stops_alone_and_the_others_finish(tmp_path, capsys):
    code = main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.epochs=1",
                 "--config.optimizer.name=sgd", "--sweep", "optimizer.learning_rate=0.01,1e9"])
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert out[-2].startswith("learning_rate_0.01 best checkpoint: step 39; test accuracy")
    assert out[-1].startswith("learning_rate_1e+09 diverged: ") and "became" in out[-1]


@pytest.mark.parametrize("argv,message", [
    ("--seeds 4-0", "--seeds '4-0': '4-0' is not a range from a lower to a higher seed"),
    ("--seeds a", "--seeds 'a': 'a' is not a seed or a range of seeds; write e.g. 0-4"),
    ("--seeds 0-2,2", "--seeds '0-2,2' names seed 2 more than once"),
    ("--seeds=-1", "--seeds '-1': '-1' is not a seed or a range of seeds"),
    ("--seeds 3-x", "--seeds '3-x': '3-x' is not a seed or a range of seeds"),
    ("--seeds 0-1 --config.seed=3", "--seeds sets the seed, which --config.seed sets too"),
    ("--seeds 0-1 --allow-config-change", "--allow-config-change applies to single runs"),
    ("--sweep model.width=8,16", "--sweep 'model.width=8,16': sweep optimizer.learning_rate"),
    ("--sweep optimizer.learning_rate=fast", "the values are not numbers"),
    ("--sweep optimizer.learning_rate=0,0.1", "learning rates must be finite numbers above 0"),
    ("--sweep optimizer.learning_rate=0.1 --config.optimizer.learning_rate=0.2",
     "--sweep sets optimizer.learning_rate, which --config.optimizer.learning_rate sets too"),
    ("--seeds 0-1 --seeds 2", "--seeds is given twice"),
])
def test_bad_seeds_and_sweeps_are_one_line_exit_2_and_train_nothing(capsys, tmp_path, argv,
                                                                    message):
    code = main(["train", "--config", TINY, "--workdir", str(tmp_path / "w"), *argv.split()])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not os.path.exists(tmp_path / "w")


def test_a_run_that_stops_early_stops_where_it_would_alone(tmp_path):
    """Early stopping is each run's own: the others go on, and each stops at its own step."""
    changes = {"eval_every": 4, "early_stopping.patience": 2, "parallel.mesh": "data=1"}
    named = run.variants(tiny_config(**changes), seeds=[1, 3])  # stop at steps 36 and 20
    together = run.train_many(list(named.values()), [str(tmp_path / n) for n in named],
                              console=False)
    for (name, config), summary in zip(named.items(), together):
        alone = run.train_and_evaluate(config, str(tmp_path / "alone" / name), console=False)
        assert summary["stop_reason"] == alone["stop_reason"]
        assert summary["latest_step"] == alone["latest_step"] < 78
        for a, b in zip(leaves(summary["state"]), leaves(alone["state"])):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)
        assert summary["test"]["step"] == alone["test"]["step"]
    assert together[0]["latest_step"] != together[1]["latest_step"]


def test_a_group_reads_each_runs_augmented_batches_on_the_device_as_the_host_sends_them(
        tmp_path):
    results = {}
    for on_device in (True, False):
        config = tiny_config("digits_mlp.py", **{"dataset.on_device": on_device, "steps": 6,
                                                 "dataset.batch_size": 16, "log_every": 1,
                                                 "eval_split": "test"})
        configs = list(run.variants(config, seeds=(0, 1)).values())
        workdirs = [str(tmp_path / f"{on_device}_{i}") for i in range(2)]
        results[on_device] = run.train_many(configs, workdirs, console=False,
                                            dataset=cifar_shaped())
    for fed, sent in zip(results[True], results[False]):
        for a, b in zip(leaves(fed["state"]), leaves(sent["state"])):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)
        losses = [[r["train_loss"] for r in s["history"] if "train_loss" in r]
                  for s in (fed, sent)]
        assert len(losses[0]) == 6
        np.testing.assert_allclose(losses[0], losses[1], rtol=TOLERANCE)
    # the two seeds read different batches: their first losses differ
    assert results[True][0]["history"][1]["train_loss"] != \
        results[True][1]["history"][1]["train_loss"]


def test_a_group_resumes_with_the_checks_of_a_run_alone(tmp_path):
    """One resume for both: a group refuses other data and another config, naming them, and
    with allow_config_change goes on and records the change in each run's history."""
    workdirs = [str(tmp_path / f"seed_{seed}") for seed in SEEDS]

    def group(**changes):
        return list(run.variants(tiny_config(**{"steps": 4, "dataset.batch_size": 16,
                                                "eval_split": "test", **changes}),
                                 seeds=SEEDS).values())

    run.train_many(group(), workdirs, console=False, dataset=cifar_shaped())
    with pytest.raises(ValueError, match=r"was trained on other data than cifar_shaped is now "
                                         r"\(examples differ\)"):
        run.train_many(group(steps=8), workdirs, console=False, dataset=cifar_shaped(n=64))
    with pytest.raises(ValueError, match=r"was trained with another config \(model.dropout "
                                         r"0.2 -> 0.5\)"):
        run.train_many(group(steps=8, **{"model.dropout": 0.5}), workdirs, console=False,
                       dataset=cifar_shaped())
    summaries = run.train_many(group(steps=8, **{"model.dropout": 0.5}), workdirs,
                               console=False, dataset=cifar_shaped(), allow_config_change=True)
    assert [int(s["state"].step) for s in summaries] == [8, 8]
    for workdir in workdirs:
        with open(os.path.join(workdir, "history.jsonl")) as f:
            changes = [json.loads(line) for line in f]
        assert [(c["step"], c["changed"]) for c in changes] == [(4, {"model.dropout": [0.2, 0.5]})]


def test_a_group_killed_between_saves_resumed_under_another_config_removes_nothing(group,
                                                                                   tmp_path):
    """The runs ahead of the common step keep their checkpoints when the resume is refused."""
    workdir, _ = group
    named = run.variants(tiny_config(**{"model.dropout": 0.5}), SEEDS, RATES)
    dirs = [shutil.copytree(os.path.join(workdir, name), str(tmp_path / name)) for name in named]
    shutil.rmtree(os.path.join(dirs[0], "checkpoints", "78"))  # as if killed before its save
    with pytest.raises(ValueError, match=r"was trained with another config \(model.dropout"):
        run.train_many(list(named.values()), dirs, console=False)
    for resumed in dirs[1:]:
        assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["39", "78"]
