"""Work directories in a Google Cloud Storage bucket: `gs://bucket/prefix`.

A work directory may be a folder on this machine or a prefix in a bucket. In a bucket,
checkpoints go through orbax (its arrays through tensorstore's own GCS driver), and every other
file (`metrics.jsonl`, `history.jsonl`, TensorBoard's event files, the eval JSON, the curves,
the lease that stands for the lock) through etils' `epath` on fsspec's `gcsfs`: one object per
file, each written whole. An object store has no links, so the link checks of a folder have
nothing to check there. Credentials are Google's usual ones (`GOOGLE_APPLICATION_CREDENTIALS`,
or `gcloud auth application-default login`); `STORAGE_EMULATOR_HOST` and
`TENSORSTORE_GCS_HTTP_URL` point both layers at an emulator.

Only `gs://` is taken. `s3://` is refused up front: orbax 0.12 writes a checkpoint's arrays to a
file system or to `gs://` only (it reads `s3://...` as a relative path), so a run there could
not save. Every other scheme is refused alike, before anything is written.
"""
import functools
import json
import logging
import os
import re

# A path that names a scheme (gs://, s3://, https://): read as a local path it would be a folder
# named "gs:" in the current directory, the bucket untouched.
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
BUCKET = re.compile(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?")


def is_url(path) -> bool:
    return bool(URL.match(str(path)))


def absolute(where: str) -> str:
    """A local path made absolute; a URL as it is, without a trailing "/"."""
    return where.rstrip("/") if is_url(where) else os.path.abspath(where)


def check_url(url: str, what: str = "workdir") -> str:
    """`url` without a trailing "/" if it is a `gs://bucket/...` descent can work in; else a
    ValueError naming what to pass instead."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "s3":
        raise ValueError(f"{what} {url!r}: s3:// is not supported, since orbax writes a "
                         f"checkpoint's arrays to a file system or gs:// only; mount the bucket "
                         f"(mountpoint-s3) and pass the mounted path")
    if scheme != "gs" or not url.startswith("gs://"):
        raise ValueError(f"{what} {url!r}: descent works in gs:// buckets or on a file system "
                         f"only; pass gs://BUCKET/PATH or a local path")
    if not BUCKET.fullmatch(url.rstrip("/")) or "//" in url[5:].rstrip("/"):
        raise ValueError(f"{what} {url!r} does not name a bucket and a path in it; pass "
                         f"gs://BUCKET/PATH")
    if url.rstrip("/").count("/") < 3:
        raise ValueError(f"{what} {url!r} is a whole bucket; pass a folder in it, "
                         f"gs://BUCKET/PATH")
    try:
        import gcsfs  # noqa: F401
        from google.cloud import storage  # noqa: F401 - the lease's conditional writes
    except ImportError:
        raise ValueError(f"{what} {url!r} needs gcsfs and google-cloud-storage, which are not "
                         f"installed here: pip install 'descent[gcs]'") from None
    _quiet_gcsfs()
    _reach(url.rstrip("/").split("/")[2], what, url)
    return url.rstrip("/")


@functools.cache
def _reach(bucket: str, what: str, url: str) -> None:
    """Lists the bucket once per process, so missing credentials or a network that cannot
    reach it are named in one line before any work, not deep inside a save."""
    try:
        path(f"gs://{bucket}").exists()
    except Exception as e:  # noqa: BLE001 - the storage libraries raise many kinds
        raise ValueError(f"{what} {url!r} cannot be reached ({failure(e)})") from None


def _quiet_gcsfs() -> None:
    """fsspec caches a bucket's listings, which another process's writes (orbax's, through
    tensorstore) make stale: listings are read afresh. gcsfs's own log (its guess at a bucket's
    kind, a traceback per failed request) is kept out: descent names a failure in one line."""
    import fsspec

    if fsspec.config.conf.get("gcs", {}).get("use_listings_cache") is False:
        return
    fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def is_folder(where: str) -> bool:
    """`os.path.isdir`, for a local path or a URL alike."""
    return isdir(where) if is_url(where) else os.path.isdir(where)


def path(url: str):
    from etils import epath

    _quiet_gcsfs()
    return epath.Path(url)


def exists(url: str) -> bool:
    return path(url).exists()


def isdir(url: str) -> bool:
    return path(url).is_dir()


def listdir(url: str) -> list[str]:
    """The names directly under `url` (an empty list where there is nothing)."""
    p = path(url)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.iterdir())


def files_under(url: str) -> list[str]:
    """Every object under `url`, relative to it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return sorted(os.path.relpath(found, root) for found in fs.find(root))


def read_bytes(url: str) -> bytes:
    p = path(url)
    if not p.exists():
        raise FileNotFoundError(2, "No such object", url)
    return p.read_bytes()


def write(url: str, data: str | bytes) -> None:
    """Writes `data` as the whole object at `url`: a reader sees the old object or the new one."""
    p = path(url)
    p.write_bytes(data.encode() if isinstance(data, str) else data)


def append_line(url: str, record: dict) -> None:
    """Adds `record` as one line of JSON to the object at `url`. An object cannot be appended
    to: it is read and written again whole (records are small, and written once per logging
    point)."""
    before = read_bytes(url) if exists(url) else b""
    write(url, before + (json.dumps(record) + "\n").encode())


def remove(url: str) -> None:
    path(url).unlink(missing_ok=True)


def rmtree(url: str) -> None:
    p = path(url)
    if p.exists():
        p.rmtree()


def rename(source: str, target: str) -> None:
    """Moves the folder (or object) `source` to `target`: a copy, then a deletion (an object
    store has no rename)."""
    path(source).rename(path(target))


def probe_writable(url: str) -> None:
    """Writes and deletes a small object under `url`, so a bucket that does not exist, refuses
    writes or has no credentials to reach it is named now, before any work is done."""
    probe = f"{url}/.write-test"
    try:
        write(probe, b"\0")
        remove(probe)
    except Exception as e:  # noqa: BLE001 - the storage libraries raise many kinds
        raise ValueError(f"workdir {url!r} cannot be written ({failure(e)})") from None


def failure(error: BaseException) -> str:
    """What went wrong with a bucket, in one line that says what to do."""
    text = f"{type(error).__name__}: {error}"
    first = text.splitlines()[0][:300]
    if "credentials" in text.lower() or "DefaultCredentialsError" in text:
        return ("no Google Cloud credentials were found: set GOOGLE_APPLICATION_CREDENTIALS to "
                "a service account's key file, or run `gcloud auth application-default login`")
    if "404" in text or "NotFound" in text or isinstance(error, FileNotFoundError):
        return "the bucket does not exist; create it (gcloud storage buckets create) or fix its name"
    if any(code in text for code in ("401", "403", "Forbidden", "Unauthorized")) or isinstance(
            error, PermissionError):
        return ("the bucket refuses these credentials: Google's usual ones, from the key file "
                "GOOGLE_APPLICATION_CREDENTIALS names or `gcloud auth application-default "
                "login` (without either the request is anonymous); grant them Storage Object "
                "Admin on the bucket")
    return first
