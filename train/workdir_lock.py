"""One trainer per work directory: an advisory lock on `<workdir>/.descent.lock`.

Training holds it exclusively; evaluation, sampling and restoring hold it shared, so they may
run side by side but never while a trainer saves and prunes checkpoints. The operating system
releases the lock when its process dies, however it dies, so a crashed run never leaves a
directory locked; the holder's pid, host and start time are written into the file for the
message a second trainer gets, and cleared on a clean exit (what is found there on taking the
lock was left by a run that crashed). In multi-process runs process 0 holds it for all.
Each command takes it once, for as long as it works in the directory.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket

import jax

from train.files import open_own
from train.workdir import check

log = logging.getLogger(__name__)

LOCK_FILE = ".descent.lock"


class WorkdirBusy(ValueError):
    """Another process holds the work directory's lock."""


@contextlib.contextmanager
def hold(workdir: str, *, exclusive: bool):
    """Holds `workdir`'s lock (exclusive for training) while the block runs; a directory in use
    raises WorkdirBusy at once, naming the holder. A work directory holding a link, or one
    orbax cannot take, is refused first (`train.workdir.check`)."""
    path = os.path.join(check(workdir), LOCK_FILE)
    if jax.process_index() != 0:
        yield
        return
    try:  # held open read-only: a file open for writing would keep the disk from being
        # remounted read-only, and flock does not need write access
        fd = open_own(path, os.O_RDONLY | os.O_CREAT)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.ENOENT) and not exclusive:
            yield  # a read-only copy, or no work directory: nobody can be training in it
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
            yield
        finally:
            if exclusive:
                with contextlib.suppress(OSError):  # e.g. the disk went read-only meanwhile
                    _write(path, None)  # a clean exit: nothing to take over
    finally:
        os.close(fd)  # releases the lock


def _busy_message(workdir: str, fd: int, exclusive: bool) -> str:
    holder = _holder(fd)
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
