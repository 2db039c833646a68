"""The experiment trackers teams use, as writers of a run's records: Weights & Biases and MLflow,
turned on by `log.trackers` ("wandb", "mlflow" or "wandb,mlflow"), each an optional install.

A tracked run gets the resolved config as its parameters, every record the run writes (the
numbers of `metrics.jsonl`, at their steps), and at the end the final evaluation and the curves'
PNG. A resumed run continues the same tracked run: its id is kept in `<workdir>/trackers.json`.
Records of steps a resumed run trains again after a kill are sent again, with the same numbers
(a resumed run is bit-identical). Everything is kept inside the work directory unless the
tracker is told otherwise: W&B's files under `<workdir>/wandb/` (synced to the server unless
`WANDB_MODE=offline`), MLflow's file store at `<workdir>/mlruns` unless `MLFLOW_TRACKING_URI`
names a server or database. A tracker that fails mid-run warns once and is dropped; training
goes on. Only process 0 tracks.
"""
import contextlib
import importlib
import json
import logging
import netrc
import os
import time
from collections.abc import Iterator

from train import storage
from train.files import read_bytes, write_atomically

log = logging.getLogger(__name__)

IDS_FILE = "trackers.json"
# name -> (module to import, the extra that installs it)
KNOWN = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
WANDB_HOST = "api.wandb.ai"


def names(config, workdir: str = "") -> list[str]:
    """The trackers `config.log.trackers` names, checked: known, each once, installed, and for
    W&B online, with credentials; for a work directory in a bucket, each with a place of its
    own on this machine or a server (`WANDB_DIR`, `MLFLOW_TRACKING_URI`), since neither writes
    to a bucket. Raises ValueError naming the fix."""
    given = config.log.get("trackers", "")
    if not isinstance(given, str):
        raise ValueError(f"log.trackers={given!r} is not text; write e.g. wandb,mlflow")
    listed = [n.strip() for n in given.split(",") if n.strip()]
    for name in listed:
        if name not in KNOWN:
            raise ValueError(f"log.trackers: unknown tracker {name!r}; known: "
                             f"{', '.join(KNOWN)} (comma-separated, or empty for none)")
    if len(set(listed)) < len(listed):
        raise ValueError(f"log.trackers={given!r} names a tracker twice; name each once")
    if listed and not (isinstance(config.log.get("project"), str) and config.log.project):
        raise ValueError("log.project is empty; name the W&B project or MLflow experiment the "
                         "runs go to")
    for name in listed:
        module, extra = KNOWN[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(f"log.trackers={name} needs the {module} package, which is not "
                             f"installed here: pip install 'descent[{extra}]'") from None
    if "wandb" in listed:
        _check_wandb_credentials()
    if storage.is_url(workdir):
        for name, variable, what in (("wandb", "WANDB_DIR", "a folder on this machine for "
                                      "W&B's files"),
                                     ("mlflow", "MLFLOW_TRACKING_URI", "the MLflow server")):
            if name in listed and not os.environ.get(variable):
                raise ValueError(f"log.trackers={name} with a work directory in a bucket needs "
                                 f"{variable} set to {what}; {name} cannot write to {workdir}")
    return listed


def _check_wandb_credentials() -> None:
    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        if netrc.netrc(path).authenticators(WANDB_HOST):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ValueError(f"log.trackers=wandb: no W&B credentials: WANDB_API_KEY is not set and "
                     f"{path} has no {WANDB_HOST} entry; run `wandb login`, set WANDB_API_KEY, "
                     f"or set WANDB_MODE=offline to keep the run in files")


def _numbers(record: dict) -> dict:
    return {k: float(v) for k, v in record.items() if k not in ("step", "time")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                   else {f"{prefix}{key}": value})
    return out


class _Wandb:
    def __init__(self, workdir: str, config, run_id: str | None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=config.log.project, name=os.path.basename(workdir), id=run_id or None,
            resume="allow", dir=os.environ["WANDB_DIR"] if storage.is_url(workdir) else workdir,
            config=config.to_dict(), reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, symlink=False,
                                    x_disable_stats=True))
        self.id = self.run.id

    def write(self, record: dict) -> None:
        self.run.log(_numbers(record), step=int(record["step"]))

    def finish(self, final: dict, curves: str | None) -> None:
        self.run.summary.update(final)
        if curves:
            self.run.summary["curves"] = self.wandb.Image(curves)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, workdir: str, config, run_id: str | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store in the work directory, which MLflow keeps for such use
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = "file://" + os.path.join(workdir, "mlruns")
        self.client = MlflowClient(tracking_uri=uri)
        if run_id:
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(config.log.project)
            experiment = (found.experiment_id if found
                          else self.client.create_experiment(config.log.project))
            self.id = self.client.create_run(experiment,
                                             run_name=os.path.basename(workdir)).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in _flat(config.to_dict()).items()]
            for i in range(0, len(params), 100):  # MLflow takes 100 parameters per call
                self.client.log_batch(self.id, params=params[i:i + 100])

    def write(self, record: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(record.get("time", time.time()) * 1000)
        self.client.log_batch(self.id, metrics=[
            Metric(k, v, stamp, int(record["step"])) for k, v in _numbers(record).items()])

    def finish(self, final: dict, curves: str | None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, stamp, int(final.get("step", 0)))
                                                for k, v in _numbers(final).items()])
        if curves:
            self.client.log_artifact(self.id, curves)

    def close(self) -> None:
        self.client.set_terminated(self.id)


_KINDS = {"wandb": _Wandb, "mlflow": _Mlflow}


class Trackers:
    """A run's trackers: `write(record)` hands a record to each; one that fails is named once
    in a warning and dropped."""

    def __init__(self, workdir: str, config, listed: list[str]):
        self.workdir, self.open = workdir, {}
        path = os.path.join(workdir, IDS_FILE)
        ids = {}
        if storage.exists(path) if storage.is_url(path) else os.path.exists(path):
            try:
                ids = dict(json.loads(read_bytes(path)))
            except (OSError, ValueError, TypeError) as e:
                log.warning("%s cannot be read (%s); the trackers start new tracked runs", path,
                            e)
        for name in listed:
            self._guard(name, "start", lambda n=name: self.open.__setitem__(
                n, _KINDS[n](workdir, config, ids.get(n))))
        known = {**ids, **{n: t.id for n, t in self.open.items()}}
        if known != ids:
            write_atomically(path, json.dumps(known, indent=1) + "\n")

    def write(self, record: dict) -> None:
        for name, tracker in list(self.open.items()):
            self._guard(name, f"record step {record.get('step')}", lambda t=tracker: t.write(
                record))

    def finish(self, summary: dict) -> None:
        """The final evaluation (as test_<metric>) and the curves, then each tracked run ends."""
        test = summary.get("test") or {}
        final = {f"{test.get('split', 'test')}_{k}": v for k, v in test.items()
                 if k not in ("split", "step", "checkpoint", "weights", "counted", "examples")}
        final = {**final, "step": test.get("step", 0), "best_step": summary.get("best_step")}
        for name, tracker in list(self.open.items()):
            self._guard(name, "record the final evaluation",
                        lambda t=tracker: t.finish(_numbers_and_step(final), summary.get("curves")))

    def close(self) -> None:
        for name, tracker in list(self.open.items()):
            self._guard(name, "finish", tracker.close)
        self.open = {}

    def _guard(self, name: str, doing: str, call) -> None:
        try:
            call()
        except Exception as e:  # noqa: BLE001 - a tracker never stops training
            self.open.pop(name, None)
            log.warning("%s could not %s (%s: %s); it gets no more of this run, "
                        "which goes on (metrics.jsonl holds every record)", name, doing,
                        type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")


def _numbers_and_step(final: dict) -> dict:
    return {**_numbers(final), "step": final.get("step", 0)}


@contextlib.contextmanager
def tracked(workdir: str, config, listed: list[str], chief: bool) -> Iterator[Trackers | None]:
    """The run's trackers while it trains (None without any, and on processes other than 0)."""
    if not listed or not chief:
        yield None
        return
    trackers = Trackers(storage.absolute(workdir), config, listed)
    try:
        yield trackers
    finally:
        trackers.close()


__all__ = ["IDS_FILE", "KNOWN", "Trackers", "names", "tracked"]
