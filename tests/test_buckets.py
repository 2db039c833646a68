"""A work directory in a gs:// bucket: train, kill -9, resume bit-identical, eval and predict in
fresh processes, the lease, and the schemes and buckets refused up front.

The bucket is gcp-storage-emulator's, started here on 127.0.0.1 and stopped after the module.
Orbax writes the arrays through tensorstore's own GCS driver (`TENSORSTORE_GCS_HTTP_URL`), the
other files go through gcsfs (`STORAGE_EMULATOR_HOST`). The emulator leaves out one thing real
GCS sends, which tensorstore needs: the object's generation in the `x-goog-generation` header of
a download (without it tensorstore's OCDBT reads fail with "Malformed StorageGeneration"); and
it ignores the condition of an upload or a deletion (`ifGenerationMatch`), which the lease
relies on. The fixture adds both, as GCS documents them.
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from http import HTTPStatus

import jax
import numpy as np
import pytest

from conftest import ROOT, xla_flags

pytest.importorskip("gcp_storage_emulator")

BUCKET = "descent-tests"
RUN = ["--config", "experiments/configs/digits_mlp.py:tiny", "--config.epochs=2",
       "--config.checkpoint.every=10", "--config.checkpoint.keep=2"]
FINAL_STEP = 78  # 2 epochs of 39 steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """The emulator's address; the environment of this process points both storage layers at
    it, and the commands started from it inherit that."""
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    def with_generation(handler):
        def handle(request, response, storage, *args, **kwargs):
            handler(request, response, storage, *args, **kwargs)
            try:
                found = storage.get_file_obj(request.params["bucket_name"],
                                             request.params["object_id"])
            except Exception:  # noqa: BLE001 - not found: the handler said so
                return
            response["x-goog-generation"] = found["generation"]
        return handle

    def with_preconditions(handler):
        def handle(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            meta = request.data.get("meta", {}) if isinstance(request.data, dict) else {}
            name = request.query.get("name", [meta.get("name")])[0] or request.params.get(
                "object_id")
            if wanted and name:
                try:
                    now = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
                except Exception:  # noqa: BLE001 - no such object: generation 0
                    now = "0"
                if str(now) != wanted[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                    return
            handler(request, response, storage, *args, **kwargs)
        return handle

    wrapped = {objects.download: with_generation(objects.download),
               objects.insert: with_preconditions(objects.insert),
               objects.delete: with_preconditions(objects.delete)}
    emulator.HANDLERS = tuple((regex, {method: wrapped.get(h, h) for method, h in handlers.items()})
                              for regex, handlers in emulator.HANDLERS)
    objects.download = wrapped[objects.download]  # what a JSON get with alt=media hands over to
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # every miss is an ERROR
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}  # and EPATH_USE_TF: tests/conftest.py
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    server.stop()


def descent(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT,
                          env={**os.environ, "XLA_FLAGS": xla_flags(1)}, capture_output=True,
                          text=True, timeout=timeout)


def start(workdir):
    return subprocess.Popen([sys.executable, "-m", "experiments", "train", *RUN, "--workdir",
                             workdir], cwd=ROOT, env={**os.environ, "XLA_FLAGS": xla_flags(1)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def objects_under(url) -> list[str]:
    from train import storage

    storage.check_url(url)
    return storage.files_under(url) if storage.exists(url) else []


def committed(workdir) -> list[int]:
    """The steps whose save orbax committed (its commit file is written last)."""
    return sorted({int(name.split("/")[1]) for name in objects_under(workdir)
                   if name.startswith("checkpoints/") and name.count("/") == 2
                   and name.endswith("/commit_success.txt")})


def final_state(workdir):
    from experiments import run

    return jax.device_get(run.restore(workdir, FINAL_STEP, mesh="data=1").state)


def test_train_kill_9_resume_eval_and_predict_in_a_bucket(gcs, tmp_path):
    whole = f"gs://{BUCKET}/uninterrupted"
    done = descent("train", *RUN, "--workdir", whole)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"workdir: {whole} " in done.stdout + done.stderr

    tuned = descent("train", "--config", "experiments/configs/digits_mlp.py:tiny",
                    "--config.epochs=1", f"--config.init_from={whole}",
                    "--workdir", str(tmp_path / "tuned"))  # a warm start from the bucket
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert (f"init_from: 6 of 6 arrays loaded from the checkpoint at step {FINAL_STEP} in "
            f"{whole}") in tuned.stdout + tuned.stderr

    killed = f"gs://{BUCKET}/killed"
    proc = start(killed)
    deadline = time.monotonic() + 300
    while not [s for s in committed(killed) if s >= 20]:  # a checkpoint beyond the first
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    newest = committed(killed)[-1]
    assert 20 <= newest < FINAL_STEP  # killed after a checkpoint existed, before the end

    resumed = descent("train", *RUN, "--workdir", killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resum" in resumed.stdout + resumed.stderr  # it picked the run up, not anew
    a, b = final_state(whole), final_state(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

    names = objects_under(killed)
    assert ".descent.lease" not in names  # given back at a clean exit
    assert {"metrics.jsonl", "curves.png", f"eval_test_{FINAL_STEP}.json"} <= set(names)
    from train import report, storage

    def logged(workdir):  # the steps of the train records (a resumed run adds a compile record)
        return [r["step"] for r in report.read_metrics(workdir) if "train_loss" in r]

    assert logged(killed) == logged(whole)  # none twice, none missing
    assert logged(killed)[-1] == FINAL_STEP
    events = [n for n in names if n.startswith("tensorboard/train/events.out.tfevents.")]
    assert len(events) == 1  # the killed run's file replaced by the resumed run's
    local = tmp_path / "tb" / "train"
    local.mkdir(parents=True)
    (local / os.path.basename(events[0])).write_bytes(
        storage.read_bytes(f"{killed}/{events[0]}"))
    from helpers import tensorboard_scalars

    assert tensorboard_scalars(local)["loss"][-1][0] == FINAL_STEP

    evaluated = descent("eval", "--workdir", killed)  # a fresh process
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    saved = json.loads(storage.read_bytes(f"{whole}/eval_test_{FINAL_STEP}.json"))
    assert f"test accuracy {saved['accuracy']:.4f}" in evaluated.stdout

    from sklearn.datasets import load_digits

    rows = tmp_path / "digits.npy"
    np.save(rows, load_digits().images[:2].reshape(2, 8, 8, 1).astype(np.float32))
    predicted = descent("predict", "--workdir", killed, str(rows))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.count(" row ") == 2


def lease(host: str, age_s: float, pid: int = 1) -> bytes:
    return json.dumps({"owner": "x", "pid": pid, "host": host, "since": "2026-01-01T00:00:00",
                       "heartbeat": time.time() - age_s}).encode()


def test_a_live_lease_refuses_a_second_trainer_and_a_stale_one_is_taken_over(gcs):
    from train import storage, workdir_lock

    workdir = f"gs://{BUCKET}/leased"
    storage.check_url(workdir)
    storage.write(f"{workdir}/.descent.lease", lease("tpu-vm-7", age_s=5))
    busy = descent("train", *RUN, "--workdir", workdir)
    assert busy.returncode == 2
    assert busy.stderr.strip().splitlines()[-1].startswith("descent: error: cannot train in")
    assert "tpu-vm-7" in busy.stderr and "Traceback" not in busy.stderr
    assert objects_under(workdir) == [".descent.lease"]  # nothing written

    with pytest.raises(workdir_lock.WorkdirBusy, match="cannot read .* in use by pid 1 on "
                                                       "tpu-vm-7"):  # nor evaluate meanwhile
        with workdir_lock.hold(workdir, exclusive=False):
            pass

    storage.write(f"{workdir}/.descent.lease",
                  lease("tpu-vm-7", age_s=workdir_lock.STALE_S + 1))
    with workdir_lock.hold(workdir, exclusive=True):
        holder = json.loads(storage.read_bytes(f"{workdir}/.descent.lease"))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert not storage.exists(f"{workdir}/.descent.lease")

    storage.write(f"{workdir}/.descent.lease",  # this host's, by a process that is gone
                  lease(socket.gethostname(), age_s=1, pid=dead_pid()))
    with workdir_lock.hold(workdir, exclusive=True):
        pass


def test_of_two_trainers_that_find_no_lease_only_one_takes_it(gcs, monkeypatch):
    """The second writes its lease only if none is there (GCS's conditional write): another
    host's lease made between its look and its write stops it."""
    from train import storage, workdir_lock

    workdir = f"gs://{BUCKET}/raced"
    storage.check_url(workdir)
    looked = workdir_lock._lease_holder

    def another_host_takes_it_meanwhile(blob):
        storage.write(f"{workdir}/.descent.lease", lease("tpu-vm-9", age_s=0))
        return looked(blob)

    monkeypatch.setattr(workdir_lock, "_lease_holder", another_host_takes_it_meanwhile)
    with pytest.raises(workdir_lock.WorkdirBusy, match="another trainer took its lease"):
        with workdir_lock.hold(workdir, exclusive=True):
            pass
    assert json.loads(storage.read_bytes(f"{workdir}/.descent.lease"))["host"] == "tpu-vm-9"


def test_a_trainer_whose_lease_was_taken_over_saves_no_more(gcs, monkeypatch):
    """A trainer that could not renew its lease in time finds, at its next renewal, that
    another took it over: its next save stops the run instead of writing beside the other's."""
    from train import checkpoint, storage, workdir_lock

    monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.2)
    workdir = f"gs://{BUCKET}/taken-over"
    storage.check_url(workdir)
    with workdir_lock.hold(workdir, exclusive=True) as holding:
        holding.check()  # still this run's
        storage.write(f"{workdir}/.descent.lease", lease("tpu-vm-3", age_s=0))
        deadline = time.monotonic() + 30
        while not holding.lost:
            assert time.monotonic() < deadline, "the renewal never found the lease taken"
            time.sleep(0.1)
        with pytest.raises(checkpoint.CheckpointWriteError, match="taken over by another"):
            holding.check()
    assert json.loads(storage.read_bytes(f"{workdir}/.descent.lease"))["host"] == "tpu-vm-3"


def test_a_trainer_renews_its_lease_while_it_holds_it(gcs, monkeypatch):
    from train import storage, workdir_lock

    monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.2)
    workdir = f"gs://{BUCKET}/renewed"
    storage.check_url(workdir)
    with workdir_lock.hold(workdir, exclusive=True):
        first = json.loads(storage.read_bytes(f"{workdir}/.descent.lease"))
        deadline = time.monotonic() + 30
        while (now := json.loads(storage.read_bytes(f"{workdir}/.descent.lease")))[
                "heartbeat"] == first["heartbeat"]:
            assert time.monotonic() < deadline, "the heartbeat was never renewed"
            time.sleep(0.1)
        assert now["owner"] == first["owner"] and now["heartbeat"] > first["heartbeat"]
    assert not storage.exists(f"{workdir}/.descent.lease")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("workdir, extra, says", [
    ("s3://bucket/run", [], "s3:// is not supported"),
    ("https://example.com/run", [], "gs:// buckets or on a file system only"),
    (f"gs://{BUCKET}", [], "is a whole bucket"),
    ("gs://Not_A_Bucket/run", [], "does not name a bucket"),
    ("gs://no-such-bucket-here/run", [], "the bucket does not exist"),
    # orbax gathers a checkpoint's arrays by a glob of its path, in a bucket too
    (f"gs://{BUCKET}/run[1]", [], "contains '['"),
    (f"gs://{BUCKET}/group", ["--seeds", "0-1"], "a group of runs trains in a folder"),
    (f"gs://{BUCKET}/profiled", ["--config.profile.start_step=2"], "profile a run with a local"),
    (f"gs://{BUCKET}/tracked", ["--config.log.trackers=mlflow"], "needs MLFLOW_TRACKING_URI"),
])
def test_what_descent_cannot_do_in_a_bucket_is_one_line_exit_2_and_writes_nothing(
        gcs, tmp_path, monkeypatch, workdir, extra, says):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = os.path.join(ROOT, "experiments", "configs", "digits_mlp.py:tiny")
    done = subprocess.run([sys.executable, "-m", "experiments", "train", "--config", config,
                           "--workdir", workdir, *extra], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "XLA_FLAGS": xla_flags(1),
                                                       "PYTHONPATH": ROOT})
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("descent: error: ") and says in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert os.listdir(tmp_path) == []  # no local folder named "s3:" or "gs:"
    if workdir.startswith(f"gs://{BUCKET}/"):
        assert objects_under(workdir) == []


def wine_files(tmp_path):
    """The wine table as a CSV and an .npz, on disk and in the bucket: {format: (local, url)}."""
    from sklearn.datasets import load_wine

    from train import storage

    wine = load_wine()
    table = ",".join([*wine.feature_names, "class"]) + "\n" + "".join(
        ",".join([*map(repr, map(float, x)), str(int(y))]) + "\n"
        for x, y in zip(wine.data, wine.target))
    (tmp_path / "wine.csv").write_text(table)
    np.savez(tmp_path / "wine.npz", x_train=wine.data, y_train=wine.target)
    files = {}
    for name, fmt in (("wine.csv", "csv"), ("wine.npz", "arrays")):
        url = f"gs://{BUCKET}/data/{name}"
        storage.check_url(url, what="dataset.path")
        storage.write(url, (tmp_path / name).read_bytes())
        files[fmt] = (str(tmp_path / name), url)
    return files


def test_a_table_or_arrays_in_a_bucket_read_as_the_same_file_on_disk(gcs, tmp_path):
    import data

    for fmt, (local, url) in wine_files(tmp_path).items():
        here, there = data.load(fmt, path=local), data.load(fmt, path=url)
        assert there.description()["fingerprint"] == here.description()["fingerprint"]
        assert there.description()["options"]["path"] == url  # recorded as given, not made local
        for split in ("train", "validation", "test"):
            np.testing.assert_array_equal(there.splits[split]["inputs"],
                                          here.splits[split]["inputs"])


def test_train_on_a_table_in_a_bucket_then_eval_from_another_directory(gcs, tmp_path):
    _, url = wine_files(tmp_path)["csv"]
    workdir = str(tmp_path / "wine")
    done = descent("train", "--config", "experiments/configs/digits_mlp.py:tiny",
                   "--config.dataset.name=csv", f"--config.dataset.path={url}",
                   "--workdir", workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = subprocess.run([sys.executable, "-m", "experiments", "eval", "--workdir", workdir],
                               cwd=elsewhere, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "XLA_FLAGS": xla_flags(1), "PYTHONPATH": ROOT})
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    final = done.stdout.strip().splitlines()[-1]  # best checkpoint: step N; test accuracy ...
    assert final.split("; ", 1)[1] in evaluated.stdout
    assert os.listdir(elsewhere) == []


def test_missing_credentials_name_the_variable_to_set(monkeypatch):
    """What Google's client raises with no credentials (here a key file that is not there) is
    said as the fix: the variable, or the gcloud command."""
    from google.cloud import storage as gcs

    from train import storage

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    with pytest.raises(Exception) as raised:
        gcs.Client()
    said = storage.failure(raised.value)
    assert said.startswith("no Google Cloud credentials were found: set "
                           "GOOGLE_APPLICATION_CREDENTIALS")
    assert "gcloud auth application-default login" in said


def test_two_processes_train_in_a_bucket_as_one_process_does_on_disk(gcs, tmp_path):
    """As on a TPU pod: every process writes its part of each checkpoint to the bucket, and
    process 0 the rest. With dropout off and GELU (tests/test_parallel.py says why), 2 processes
    of 4 devices end where 1 device does, up to float rounding."""
    same = ["--config", "experiments/configs/digits_mlp.py:tiny", "--config.steps=20",
            "--config.checkpoint.every=10", "--config.model.dropout=0.0",
            "--config.model.activation=gelu"]
    workdir = f"gs://{BUCKET}/two-processes"
    two = subprocess.run([sys.executable, "-m", "experiments", "launch-local", "--num-processes",
                          "2", "--devices-per-process", "4", "--", "train", *same, "--workdir",
                          workdir], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ})
    assert two.returncode == 0, two.stderr[-2000:]
    assert "in 2 process(es)" in two.stdout
    one = descent("train", *same, "--workdir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    from experiments import run

    a = jax.device_get(run.restore(workdir, 20, mesh="data=1").state.params)
    b = jax.device_get(run.restore(str(tmp_path / "one"), 20, mesh="data=1").state.params)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(y)
    assert ".descent.lease" not in objects_under(workdir)
