"""What a work directory is, and what descent refuses to work in.

Every command that works in a work directory (train and its resume, eval, sample, predict,
`run.restore`, `report.plot_curves`) calls `check` first, before it creates, reads or writes
anything there. It refuses, with one line naming the culprit and the fix:

- a URL other than `gs://bucket/path` (`s3://`, `https://`, a whole bucket): see
  `train.storage`. A bucket holds no links, so a `gs://` work directory is checked for nothing
  else;
- a path orbax's array store cannot take: a backslash (tensorstore reads it as a folder
  separator, so a checkpoint's arrays land in another folder and the checkpoint reads back
  damaged), the glob characters `[`, `*` and `?` (orbax expands a checkpoint's path as a glob
  pattern when it gathers the arrays: `[...]` then misses the checkpoint's own arrays, `*` and
  `?` can match another folder's), and a name that is not UTF-8 (tensorstore takes only
  UTF-8 paths). Every other character a file system allows works (`$`, `%`, `#`, `:`, spaces,
  newlines, non-ASCII), see docs/design.md, section 14;
- anything inside the work directory, at any depth, that is a symbolic link, a file with more
  than one name (a hard link: writing it would change the other name's file too), or neither a
  file nor a folder (a named pipe would hang a read). The work directory itself may be a link,
  or lie under one (`runs -> /big/disk/runs` is common): its path is taken as the user's, and
  everything inside it must be real.

What this guarantees: at the start of every command, nothing descent reads, writes, appends,
moves or deletes in the work directory leads outside it; the files descent opens itself
(`.descent.lock`, `metrics.jsonl`, `history.jsonl`) are opened without following links and
refused if they have another name, and it deletes only the TensorBoard event files it wrote
itself. What it does not guarantee: a link planted by another process while a command runs,
between this check and orbax's own writes, is not seen (orbax and tensorstore follow links).
"""
import os
import stat

from train import storage

# Characters of a work directory's path that orbax's array store cannot take, and why.
UNSAFE = {
    "\\": "tensorstore reads a backslash as a folder separator, so a checkpoint's arrays would "
          "land in another folder",
    "[": "orbax reads a checkpoint's path as a glob pattern, where [...] would miss the "
         "checkpoint's own arrays",
    "*": "orbax reads a checkpoint's path as a glob pattern, where * can match another "
         "folder's arrays",
    "?": "orbax reads a checkpoint's path as a glob pattern, where ? can match another "
         "folder's arrays",
}


# Folders an experiment tracker (`log.trackers`) writes in the work directory and descent never
# reads or writes: not searched for links.
TRACKER_FOLDERS = ("wandb",)


def check(workdir: str) -> str:
    """Refuses (ValueError) a work directory that orbax cannot take or that holds a link, as
    the module docstring says; returns its absolute path (a bucket's URL, without a trailing
    "/"). A directory not yet made passes."""
    if storage.is_url(workdir):
        check_name(workdir)  # orbax reads a bucket's paths as glob patterns too
        return storage.check_url(workdir)
    path = os.path.abspath(workdir)
    check_name(path)
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise ValueError(f"workdir {shown(path)} is not a folder; pass a --workdir that is "
                             f"one, or a new name")
        check_no_links(path)
    return path


def check_name(path: str) -> None:
    """Refuses a path with a character orbax's array store cannot take, naming it."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"workdir {shown(path)} is not a UTF-8 name, which orbax's array store "
                         f"cannot take; pass a --workdir named in UTF-8") from None
    for char, why in UNSAFE.items():
        if char in path:
            raise ValueError(f"workdir {shown(path)} contains {char!r}: {why}; pass a --workdir "
                             f"without it")


def check_no_links(root: str) -> None:
    """Refuses the first symbolic link, file with several names or special file under `root`."""
    def unreadable(error: OSError) -> None:
        if isinstance(error, FileNotFoundError):  # removed meanwhile (a save under way)
            return
        raise ValueError(f"{shown(error.filename)} in the work directory cannot be listed "
                         f"({error.strerror}); make it readable") from None

    for parent, dirs, files in os.walk(root, onerror=unreadable):
        for name in dirs + files:
            path = os.path.join(parent, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # removed meanwhile (an orbax temporary): nothing to check
                continue
            refuse_foreign(path, info)
        if parent == root:  # W&B's own files, with its links to its logs: descent never goes in
            dirs[:] = [d for d in dirs if d not in TRACKER_FOLDERS]


def refuse_foreign(path: str, info: os.stat_result) -> None:
    """Refuses `path` (with its lstat `info`) unless it is a folder or a file of one name."""
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(f"{shown(path)} is a symbolic link (to {shown(os.readlink(path))}); "
                         f"descent works only inside the work directory: replace the link by "
                         f"a copy of what it points to, or remove it")
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise ValueError(f"{shown(path)} is a hard link (one of {info.st_nlink} names of one "
                         f"file), which descent would change under every name; replace it by "
                         f"a copy of its own (cp -p FILE FILE.copy && mv FILE.copy FILE)")
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise ValueError(f"{shown(path)} is neither a file nor a folder (a pipe, socket or "
                         f"device); descent does not read or write those: remove it")


def shown(path: str) -> str:
    """`path` as one printable line: as is when it is, else Python's quoted escape of it."""
    return path if path.isprintable() else repr(path)
