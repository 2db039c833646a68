"""Writing into a work directory: whole files by rename, lines by append, never through a link.

A file descent appends to or reads back is opened with O_NOFOLLOW and refused if it has another
name (a hard link), so a link planted after `train.workdir.check` is not followed either. In a
bucket (`gs://`), each file is an object written whole (`train.storage`).
"""
import contextlib
import errno
import json
import os
import tempfile

from train import storage


def open_own(path: str, flags: int, mode: int = 0o644) -> int:
    """`os.open(path, flags)` that follows no symbolic link at `path` and refuses a file with
    more than one name (writing it would change the file under its other names). O_TRUNC
    takes effect only once the file is known to be descent's alone."""
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise OSError(errno.ELOOP, f"{path} is a symbolic link, which descent does not "
                                       f"follow; remove it") from None
        raise
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise OSError(errno.EMLINK, f"{path} is a hard link (a file with more than one name), "
                                    f"which descent does not write; replace it by a copy of "
                                    f"its own")
    if flags & os.O_TRUNC:
        os.ftruncate(fd, 0)
    return fd


def append_line(path: str, record: dict) -> None:
    """Appends `record` as one line of JSON to `path`, never through a link."""
    if storage.is_url(path):
        return storage.append_line(path, record)
    fd = open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a") as f:
        f.write(json_line(record))


def read_bytes(path: str) -> bytes:
    """The bytes of `path`, read without following a link."""
    if storage.is_url(path):
        return storage.read_bytes(path)
    with os.fdopen(open_own(path, os.O_RDONLY), "rb") as f:
        return f.read()


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` to a new temporary file beside `path`, then renames it over `path`: a
    reader never sees half a file, and a symbolic link at `path` is replaced, not followed."""
    if storage.is_url(path):
        return storage.write(path, data)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def json_line(record: dict) -> str:
    return json.dumps(record) + "\n"
