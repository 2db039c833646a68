"""The experiment trackers teams use (`log.trackers`): W&B in offline mode, its files read back
record by record, and MLflow with a file store, read back with MLflow's own client; a resumed run
continues the same tracked runs, a tracker that fails mid-run never stops training, and bad
input is one line, exit 2, nothing written."""
import glob
import json
import os
import shutil
import sys

import pytest

from experiments import run
from experiments.cli import main
from train import report, trackers

from conftest import config_path
from helpers import tiny_config

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = config_path("digits_mlp.py") + ":tiny"


@pytest.fixture(autouse=True)
def own_tracker_homes(tmp_path, monkeypatch):
    """W&B offline with its own folders (cache, config) in the test's; MLflow's default store;
    no credentials anywhere."""
    for variable, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                             ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for variable in ("WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(variable, raising=False)


def wandb_records(path: str) -> list:
    """The records of a W&B transaction log (`run-ID.wandb`): LevelDB's log format, blocks of
    32 KiB after a 7-byte header, each record a checksum, length and type, then the bytes of a
    `wandb_internal_pb2.Record` (split over blocks as FIRST, MIDDLE..., LAST)."""
    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    position, pending, records, block = 7, b"", [], 32768
    while position + 7 <= len(raw):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(raw[position + 4:position + 6], "little"), raw[position + 6]
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(workdir) -> dict:
    """What W&B kept of a run, over every start: ids, config keys, history by step, summary."""
    out = {"ids": set(), "config": set(), "history": {}, "summary": {}, "starts": 0}
    for path in sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))):
        out["starts"] += 1
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(record.run.run_id)
                out["config"] |= {item.key for item in record.run.config.update}
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in record.history.item}
                out["history"].setdefault(items["_step"], {}).update(items)
            elif kind == "summary":
                out["summary"].update({i.key or "/".join(i.nested_key): json.loads(
                    i.value_json) for i in record.summary.update})
    return out


def test_wandb_and_mlflow_get_every_record_and_a_resume_continues_the_same_runs(tmp_path,
                                                                                capsys):
    workdir = tmp_path / "run"
    common = ["train", "--config", TINY, "--workdir", str(workdir),
              "--config.log.trackers=wandb,mlflow", "--config.parallel.mesh=data=1"]
    assert main(common) == 0
    assert main([*common, "--config.epochs=3"]) == 0  # resumed: one more epoch
    capsys.readouterr()
    ids = json.loads((workdir / trackers.IDS_FILE).read_text())
    records = [r for r in report.read_metrics(str(workdir)) if "train_loss" in r]
    assert [r["step"] for r in records][-1] == 117
    (final,) = [json.loads(open(p).read()) for p in glob.glob(str(workdir / "eval_test_117*"))]

    tracked = wandb_run(str(workdir))
    assert tracked["starts"] == 2 and tracked["ids"] == {ids["wandb"]}  # one run, resumed
    assert {"optimizer", "model", "dataset"} <= tracked["config"]
    for record in records:
        logged = tracked["history"][record["step"]]
        for key in ("train_loss", "train_accuracy", "learning_rate"):
            assert logged[key] == pytest.approx(record[key], rel=1e-12), (record["step"], key)
    assert tracked["summary"]["test_accuracy"] == pytest.approx(final["accuracy"])
    assert tracked["summary"]["curves"]["_type"] == "image-file"

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the store descent chose, read back here
    client = MlflowClient(tracking_uri=f"file://{workdir}/mlruns")
    (experiment,) = [e for e in client.search_experiments() if e.name == "descent"]
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == ids["mlflow"] and found.info.status == "FINISHED"
    assert found.info.run_name == "run"
    assert found.data.params["optimizer.learning_rate"] == str(
        tiny_config().optimizer.learning_rate)
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["train_loss"]))
                                                    for r in records]
    assert found.data.metrics["test_accuracy"] == pytest.approx(final["accuracy"])
    assert [a.path for a in client.list_artifacts(found.info.run_id)] == ["curves.png"]

    assert main(["eval", "--workdir", str(workdir)]) == 0  # W&B's links are its own


def test_each_run_of_a_group_is_a_tracked_run_of_its_own(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path / "group"),
                 "--seeds", "0-1", "--config.steps=20", "--config.log.trackers=mlflow"]) == 0
    capsys.readouterr()
    for seed in (0, 1):
        workdir = tmp_path / "group" / f"seed_{seed}"
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        client = MlflowClient(tracking_uri=f"file://{workdir}/mlruns")
        (found,) = client.search_runs([client.get_experiment_by_name("descent").experiment_id])
        assert found.info.run_name == f"seed_{seed}" and found.data.params["seed"] == str(seed)
        losses = [(r["step"], pytest.approx(r["train_loss"]))
                  for r in report.read_metrics(str(workdir)) if "train_loss" in r]
        assert [(m.step, m.value) for m in client.get_metric_history(
            found.info.run_id, "train_loss")] == losses


def test_a_tracker_that_fails_mid_run_warns_once_and_training_finishes(tmp_path, caplog):
    workdir = tmp_path / "run"

    def break_the_store(record):  # the MLflow store becomes a file under the tracker
        if record.get("step") == 20 and (workdir / "mlruns").is_dir():
            shutil.rmtree(workdir / "mlruns")
            (workdir / "mlruns").write_text("not a store\n")

    config = tiny_config(**{"log.trackers": "mlflow", "parallel.mesh": "data=1"})
    summary = run.train_and_evaluate(config, str(workdir), console=False,
                                     writers=[break_the_store])
    assert summary["latest_step"] == 78 and summary["test"]["examples"] == 360
    warned = [r.getMessage() for r in caplog.records
              if r.name == "train.trackers" and r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("mlflow could not record step 20 ("), warned
    assert "metrics.jsonl holds every record" in warned[0]
    assert [r["step"] for r in report.read_metrics(str(workdir)) if "train_loss" in r][-1] == 78


def no_credentials(monkeypatch):
    monkeypatch.delenv("WANDB_MODE")


def not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # Python's own way to block an import


@pytest.mark.parametrize("override, prepare, message", [
    ("--config.log.trackers=tensorboardx", None,
     "log.trackers: unknown tracker 'tensorboardx'; known: wandb, mlflow"),
    ("--config.log.trackers=mlflow,mlflow", None, "names a tracker twice; name each once"),
    ("--config.log.trackers=mlflow", not_installed,
     "log.trackers=mlflow needs the mlflow package, which is not installed here: pip install "
     "'descent[mlflow]'"),
    ("--config.log.trackers=wandb", no_credentials,
     "log.trackers=wandb: no W&B credentials: WANDB_API_KEY is not set and {netrc} has no "
     "api.wandb.ai entry; run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline"),
    ("--config.log.project=", None, None),  # no tracker: the project is not read
    ("--config.log.trackers=mlflow --config.log.project=", None, "log.project is empty"),
])
def test_bad_tracker_options_are_one_line_exit_2_and_nothing_is_written(
        tmp_path, capsys, monkeypatch, override, prepare, message):
    if prepare:
        prepare(monkeypatch)
    workdir = tmp_path / "run"
    code = main(["train", "--config", TINY, "--workdir", str(workdir), "--config.steps=2",
                 *override.split()])
    err = capsys.readouterr().err.strip()
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and err.count("\n") == 0, err
    assert message.format(netrc=tmp_path / "no-netrc") in err
    assert not workdir.exists()
