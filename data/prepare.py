"""Building tensorflow-datasets datasets from raw files already on disk: no download.

tfds's own builder runs (`download_and_prepare`, ArrayRecord output), so what it writes is read
exactly as if tfds had downloaded it; only its downloader is replaced by one that serves the
files of `--manual-dir`, after checking them. Needs TensorFlow (`pip install -e '.[tf]'`): tfds's
builders read their raw files through it.
"""
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import sys

from data.tfds_source import PREPARABLE, default_data_dir

# MD5 of the decompressed official files: the check when an archive's own checksum differs
# (a re-compressed copy holds the same bytes inside another gzip wrapper).
KNOWN_CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    "input.txt": "6fb458f1232090904fb40fe944165e91",
}


def prepare(name: str, manual_dir: str, data_dir: str | None = None, log=print, *,
            quiet: bool | None = None) -> str:
    """Builds dataset `name` in `data_dir` from the raw files in `manual_dir`; returns its path.

    `quiet` (default: unless DESCENT_VERBOSE=1) keeps TensorFlow's start-up banners and tfds's
    own progress bars and messages ("Downloading and preparing...", though nothing is
    downloaded) off the terminal; `log` gets our lines either way.
    """
    if quiet is None:
        quiet = os.environ.get("DESCENT_VERBOSE") != "1"
    if name not in PREPARABLE:
        raise ValueError(f"`descent data prepare` builds {', '.join(PREPARABLE)} from local "
                         f"files, not {name!r}")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual-dir {manual_dir!r} is not a directory")
    try:
        with _silenced(quiet):  # TensorFlow's C++ start-up lines go straight to file descriptor 2
            import tensorflow  # noqa: F401 - tfds's builders read their raw files through it
    except ImportError:
        raise ValueError("preparing datasets needs TensorFlow: pip install -e '.[tf]'") from None
    import tensorflow_datasets as tfds

    data_dir = default_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        log(f"{name} is already prepared in {builder.data_dir}")
        return str(builder.data_dir)
    served = {url: _checked(url, info, manual_dir, log)
              for url, info in (builder.url_infos or {}).items()}
    extract_dir = os.path.join(data_dir, "downloads", f"descent-{name}")
    os.makedirs(extract_dir, exist_ok=True)
    manager = _local_files_manager(served, extract_dir, download_dir=os.path.join(
        data_dir, "downloads"), dataset_name=name)
    # The one private hook used: the builder asks this method for its download manager.
    builder._make_download_manager = lambda download_dir, download_config: manager  # noqa: SLF001
    log(f"preparing {name} from {os.path.abspath(manual_dir)} ...")
    if quiet:
        tfds.disable_progress_bar()
    with _silenced(quiet):
        builder.download_and_prepare(file_format="array_record")
    shutil.rmtree(extract_dir, ignore_errors=True)
    for empty in ("downloads/extracted", "downloads"):  # made by tfds, unused: nothing downloads
        with contextlib.suppress(OSError):  # not empty: someone's files, left alone
            os.rmdir(os.path.join(data_dir, empty))
    log(f"prepared {name} in {builder.data_dir}")
    return str(builder.data_dir)


@contextlib.contextmanager
def _silenced(quiet: bool):
    """Sends stdout and stderr, Python's and the C++ libraries' alike, to /dev/null."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _checked(url: str, info, manual_dir: str, log) -> str:
    """The local copy of `url`'s file, verified: by tfds's checksum, or by its content."""
    filename = info.filename or url.rsplit("/", 1)[-1]
    path = os.path.join(manual_dir, filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: --manual-dir must hold {filename}")
    with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() == info.checksum:
            return path
    opener = gzip.open if filename.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            content = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} cannot be read ({e}); fetch it again") from None
    if hashlib.md5(content).hexdigest() != KNOWN_CONTENT_MD5.get(filename):
        raise ValueError(f"{path} matches neither the checksum tfds registered for it nor the "
                         f"known content of {filename}; fetch it again")
    log(f"warning: {filename} differs from the archive tfds registered (another compression "
        f"of it), but its decompressed content matches the official file; using it")
    return path


def _local_files_manager(served: dict, extract_dir: str, **kwargs):
    """tfds's download manager, serving the checked local files for their urls."""
    import tensorflow_datasets as tfds
    from etils import epath

    class LocalFiles(tfds.download.DownloadManager):
        def download(self, url_or_urls):
            return tfds.core.utils.map_nested(self._local, url_or_urls)

        def download_and_extract(self, url_or_urls):
            return tfds.core.utils.map_nested(self._extracted, url_or_urls)

        def _local(self, url):
            if url not in served:
                raise ValueError(f"the {self._dataset_name} builder asks for {url}, for which "
                                 f"`descent data prepare` has no local file")
            return epath.Path(served[url])

        def _extracted(self, url):
            path = self._local(url)
            if path.suffix != ".gz":
                return path
            target = epath.Path(extract_dir) / path.stem
            with gzip.open(path, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return target

    return LocalFiles(**kwargs)
