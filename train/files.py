"""Writing into a work directory: whole files by rename, lines by append, never through a link."""
import contextlib
import json
import os
import tempfile


def append_line(path: str, record: dict) -> None:
    """Appends `record` as one line of JSON to `path`, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise OSError(e.errno, f"{path} is a symbolic link, which descent does not write "
                                   f"through") from None
        raise
    with os.fdopen(fd, "a") as f:
        f.write(json_line(record))


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` to a new temporary file beside `path`, then renames it over `path`: a
    reader never sees half a file, and a symbolic link at `path` is replaced, not followed."""
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
