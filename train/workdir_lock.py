"""One trainer per work directory: an advisory lock on `<workdir>/.descent.lock`.

Training holds it exclusively; evaluation, sampling and restoring hold it shared, so they may
run side by side but never while a trainer saves and prunes checkpoints. The operating system
releases the lock when its process dies, however it dies, so a crashed run never leaves a
directory locked; the holder's pid, host and start time are written into the file for the
message a second trainer gets, and cleared on a clean exit (what is found there on taking the
lock was left by a run that crashed). In multi-process runs process 0 holds it for all.
Each command takes it once, for as long as it works in the directory.

In a bucket (`gs://`), which has no locks, a trainer holds a lease instead: the object
`.descent.lease` (owner, host, pid, start, heartbeat), created only if absent (the store's
conditional write), its heartbeat renewed every `HEARTBEAT_S` while the run lasts, and deleted
on the way out. A lease whose heartbeat is older than `STALE_S` (its trainer died, or lost
the bucket) is taken over, as is one left by a process of this host that is no longer running;
any other is refused, naming its holder. Evaluation, sampling and restoring check that no live
lease is there and write nothing.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

import jax

from train import storage
from train.checkpoint import CheckpointWriteError
from train.files import open_own
from train.workdir import check

log = logging.getLogger(__name__)

LOCK_FILE = ".descent.lock"
LEASE_FILE = ".descent.lease"
HEARTBEAT_S = 15.0   # how often a trainer in a bucket renews its lease
STALE_S = 120.0      # how old a lease's heartbeat is before another trainer takes it over


class WorkdirBusy(ValueError):
    """Another process holds the work directory's lock."""


class Holding:
    """What `hold` gives the block it guards: `check()` before each write that needs the work
    directory to be this run's alone. A lock the operating system holds is never lost."""

    lost: str | None = None

    def check(self) -> None:
        if self.lost:
            raise CheckpointWriteError(self.lost)


@contextlib.contextmanager
def hold(workdir: str, *, exclusive: bool):
    """Holds `workdir`'s lock (exclusive for training) while the block runs; a directory in use
    raises WorkdirBusy at once, naming the holder. A work directory holding a link, or one
    orbax cannot take, is refused first (`train.workdir.check`)."""
    path = os.path.join(check(workdir), LOCK_FILE)
    if jax.process_index() != 0:
        yield Holding()
        return
    if storage.is_url(path):
        with _lease(check(workdir), exclusive=exclusive) as holding:
            yield holding
        return
    try:  # held open read-only: a file open for writing would keep the disk from being
        # remounted read-only, and flock does not need write access
        fd = open_own(path, os.O_RDONLY | os.O_CREAT)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.ENOENT) and not exclusive:
            yield Holding()  # a read-only copy, or no work directory: nobody trains in it
            return
        raise
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(_busy_message(workdir, fd, exclusive)) from None
        except OSError as e:  # a file system without locks (some network mounts): go on
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("%s cannot be locked here (%s); make sure no other run uses it",
                        workdir, e.strerror)
        if exclusive:
            left = _holder(fd)
            if left:
                log.info("took over the lock of %s, left by pid %s on %s (started %s), which "
                         "is no longer running", workdir, left.get("pid"), left.get("host"),
                         left.get("since"))
            _write(path, {"pid": os.getpid(), "host": socket.gethostname(),
                          "since": datetime.datetime.now().isoformat(timespec="seconds")})
        try:
            yield Holding()
        finally:
            if exclusive:
                with contextlib.suppress(OSError):  # e.g. the disk went read-only meanwhile
                    _write(path, None)  # a clean exit: nothing to take over
    finally:
        os.close(fd)  # releases the lock


def _busy_message(workdir: str, fd_or_holder: int | dict, exclusive: bool) -> str:
    holder = fd_or_holder if isinstance(fd_or_holder, dict) else _holder(fd_or_holder)
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
           if holder else "another process evaluating or sampling from it")
    doing = "train in" if exclusive else "read"
    return (f"cannot {doing} {workdir}: it is in use by {who}. Wait for that run to end, or "
            f"use another --workdir")


def _holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _write(path: str, holder: dict | None) -> None:
    fd = open_own(path, os.O_WRONLY | os.O_TRUNC)
    try:
        if holder:
            os.write(fd, json.dumps(holder).encode())
    finally:
        os.close(fd)


def _bucket_and_name(url: str) -> tuple[str, str]:
    bucket, _, name = url[len("gs://"):].partition("/")
    return bucket, name


@contextlib.contextmanager
def _lease(workdir: str, *, exclusive: bool):
    """Holds the lease of the bucket work directory `workdir` (the module docstring says how)."""
    from google.api_core import exceptions
    from google.cloud import storage as gcs

    bucket, name = _bucket_and_name(f"{workdir}/{LEASE_FILE}")
    try:
        blobs = gcs.Client().bucket(bucket)
        found = blobs.get_blob(name)
    except Exception as e:  # noqa: BLE001 - credentials, a bucket missing: one line
        raise ValueError(f"workdir {workdir!r} cannot be reached ({storage.failure(e)})") from None
    holder = _lease_holder(found)
    if holder is not None and _alive(holder):
        raise WorkdirBusy(_busy_message(workdir, holder, exclusive))
    if not exclusive:
        yield Holding()
        return
    me = {"owner": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.datetime.now().isoformat(timespec="seconds")}
    blob = blobs.blob(name)
    try:  # only if the lease is still what was read: absent (0), or the stale one
        blob.upload_from_string(json.dumps({**me, "heartbeat": time.time()}),
                                if_generation_match=found.generation if found else 0)
    except exceptions.PreconditionFailed:
        raise WorkdirBusy(f"cannot train in {workdir}: another trainer took its lease at this "
                          f"moment. Wait for that run to end, or use another --workdir") from None
    if holder is not None:
        log.info("took over the lease of %s, left by pid %s on %s (started %s), which is no "
                 "longer renewed", workdir, holder.get("pid"), holder.get("host"),
                 holder.get("since"))
    heartbeat = _Heartbeat(blob, me, workdir)
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
        if not heartbeat.lost:  # a clean exit: nothing to take over; never another's lease
            with contextlib.suppress(Exception):
                blob.delete(if_generation_match=heartbeat.generation)


def _lease_holder(blob) -> dict | None:
    """The record of lease object `blob` (None if absent or unreadable)."""
    if blob is None:
        return None
    try:
        holder = json.loads(blob.download_as_bytes())
    except Exception:  # noqa: BLE001 - cut short: its heartbeat is unknown, so it is stale
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether a lease's trainer may still be running: its heartbeat is recent and, on this
    host, its process is there."""
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)) or time.time() - beat > STALE_S:
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


class _Heartbeat(threading.Thread, Holding):
    """Renews the lease every `HEARTBEAT_S`, only while it is still the one this run wrote; a
    lease another trainer took over is `lost`, and `check` then stops the run's next save."""

    def __init__(self, blob, me: dict, workdir: str):
        super().__init__(daemon=True, name="descent-lease")
        self.blob, self.me, self.workdir = blob, me, workdir
        self.generation = blob.generation
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_S):
            try:
                self.blob.upload_from_string(json.dumps({**self.me, "heartbeat": time.time()}),
                                             if_generation_match=self.generation)
                self.generation = self.blob.generation
            except Exception as e:  # noqa: BLE001
                if type(e).__name__ == "PreconditionFailed":  # another trainer took it over
                    self.lost = (f"the lease of {self.workdir} was taken over by another "
                                 f"trainer (this run did not renew it for {STALE_S:.0f} s); "
                                 f"this run stopped without saving, and the checkpoints there "
                                 f"are that trainer's now")
                    log.error("%s", self.lost)
                    return
                log.error("could not renew the lease of %s (%s); another trainer may take it "
                          "over after %.0f s", self.workdir, storage.failure(e), STALE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
