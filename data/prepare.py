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
import logging
import os
import shutil
import sys
import tarfile
import zlib

from data.tfds_source import PREPARABLE, default_data_dir

_log = logging.getLogger(__name__)

# MD5 of the decompressed official files, per dataset: what a re-compressed copy is accepted by
# when its archive differs from the one tfds registered (Debian's dataset-fashion-mnist, for
# one, re-gzips the four files). Fashion-MNIST's: its labels from the official repository's own
# files (whose archive MD5s match the repository's README), the images as published with them.
KNOWN_CONTENT_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "tiny_shakespeare": {"input.txt": "6fb458f1232090904fb40fe944165e91"},
}

# Datasets whose files tfds never downloads (a licence to accept first): its builder reads them
# from --manual-dir itself, and registers no checksum for them.
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}

WHAT_TO_PUT = {
    "mnist": "the four MNIST IDX .gz files",
    "fashion_mnist": "the four Fashion-MNIST IDX .gz files (train-images-idx3-ubyte.gz, ...)",
    "cifar10": "cifar-10-binary.tar.gz",
    "cifar100": "cifar-100-binary.tar.gz",
    "imagenette": "imagenette2.tgz (the full-size-v2 config)",
    "imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
    "tiny_shakespeare": "input.txt",
}


def prepare(name: str, manual_dir: str, data_dir: str | None = None, *,
            quiet: bool | None = None) -> str:
    """Builds dataset `name` in `data_dir` from the raw files in `manual_dir`; returns its path.

    `quiet` (default: unless this module's logger shows DEBUG, as under --verbose) keeps
    TensorFlow's start-up banners and tfds's own progress bars and messages ("Downloading and
    preparing...", though nothing is downloaded) off the terminal; descent's own lines go to
    its logger either way.
    """
    if quiet is None:
        quiet = not _log.isEnabledFor(logging.DEBUG)
    if name not in PREPARABLE:
        raise ValueError(f"`descent data prepare` builds {', '.join(PREPARABLE)} from local "
                         f"files, not {name!r}")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual-dir {manual_dir!r} is not a directory")
    for filename in MANUAL_FILES.get(name, ()):
        if not os.path.exists(os.path.join(manual_dir, filename)):
            raise FileNotFoundError(f"{os.path.join(manual_dir, filename)} is missing: "
                                    f"--manual-dir must hold {WHAT_TO_PUT[name]}")
    try:
        with _silenced(quiet):  # TensorFlow's C++ start-up lines go straight to file descriptor 2
            import tensorflow  # noqa: F401 - tfds's builders read their raw files through it
    except ImportError:
        raise ValueError("preparing datasets needs TensorFlow: pip install -e '.[tf]'") from None
    import tensorflow_datasets as tfds

    data_dir = default_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        _log.info(f"{name} is already prepared in {builder.data_dir}; train with "
            f"--config.dataset.data_dir={data_dir}")
        return str(builder.data_dir)
    extract_dir = os.path.join(data_dir, "downloads", f"descent-{name}")
    os.makedirs(extract_dir, exist_ok=True)
    said = []  # the checks' warnings, logged once tfds's output is no longer silenced
    manager = _local_files_manager(name, builder.url_infos or {}, os.path.abspath(manual_dir),
                                   extract_dir, said, download_dir=os.path.join(
                                       data_dir, "downloads"), dataset_name=name,
                                   **({"manual_dir": os.path.abspath(manual_dir),
                                       "manual_dir_instructions":
                                           builder.MANUAL_DOWNLOAD_INSTRUCTIONS}
                                      if name in MANUAL_FILES else {}))
    # The one private hook used: the builder asks this method for its download manager.
    builder._make_download_manager = lambda download_dir, download_config: manager  # noqa: SLF001
    _log.info(f"preparing {name} from {os.path.abspath(manual_dir)} ...")
    if quiet:
        tfds.disable_progress_bar()
    try:
        with _silenced(quiet):
            builder.download_and_prepare(file_format="array_record")
    finally:
        for line in said:
            _log.warning(line)
        shutil.rmtree(extract_dir, ignore_errors=True)
        for empty in ("downloads/extracted", "downloads"):  # made by tfds, unused: nothing
            with contextlib.suppress(OSError):             # downloads; not empty: left alone
                os.rmdir(os.path.join(data_dir, empty))
    _log.info(f"prepared {name} in {builder.data_dir}; train with "
              f"--config.dataset.data_dir={data_dir}")
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


def checked(name: str, url: str, info, manual_dir: str, warnings: list[str]) -> str:
    """The local copy of the file dataset `name`'s builder downloads from `url`, verified: by
    the checksum tfds registered for it, or by the MD5 of its decompressed content (which
    appends a line to `warnings`)."""
    filename = info.filename or url.rsplit("/", 1)[-1]
    path = os.path.join(manual_dir, filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: --manual-dir must hold "
                                f"{WHAT_TO_PUT.get(name, filename)} ({filename} from {url})")
    found = _digest(path, hashlib.sha256)
    if found == info.checksum:
        return path
    expected = KNOWN_CONTENT_MD5.get(name, {}).get(filename)
    try:
        content = _digest(path, hashlib.md5, gzip.open if filename.endswith((".gz", ".tgz"))
                          else open)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} cannot be decompressed ({e}): it is cut short or not the "
                         f"{filename} of {name}; fetch it again") from None
    if content == expected:
        warnings.append(f"{filename} differs from the archive tfds registered (another compression "
            f"of it), but its decompressed content matches the official file; using it")
        return path
    known = f" or content MD5 {expected}" if expected else ""
    raise ValueError(f"{path} is not {name}'s {filename}: expected SHA-256 {info.checksum}"
                     f"{known}, found SHA-256 {found} (content MD5 {content})")


def _digest(path: str, algorithm, opener=open) -> str:
    digest = algorithm()
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files_manager(name: str, url_infos: dict, files_dir: str, extract_dir: str,
                         warnings: list[str], **kwargs):
    """tfds's download manager, serving each checked local file for its url."""
    import tensorflow_datasets as tfds
    from etils import epath

    class LocalFiles(tfds.download.DownloadManager):
        def download(self, url_or_urls):
            return tfds.core.utils.map_nested(self._local, url_or_urls)

        def download_and_extract(self, url_or_urls):
            return tfds.core.utils.map_nested(self._extracted, url_or_urls)

        @staticmethod
        def _local(url):
            if url not in url_infos:
                raise ValueError(f"the {name} builder asks for {url}, for which `descent data "
                                 f"prepare` knows no checksum")
            return epath.Path(checked(name, url, url_infos[url], files_dir, warnings))

        def _extracted(self, url):
            path = self._local(url)
            if path.name.endswith((".tar.gz", ".tgz", ".tar")):
                target = epath.Path(extract_dir) / path.name.split(".")[0]
                with tarfile.open(path) as archive:
                    archive.extractall(target, filter="data")  # nothing outside `target`
                return target
            if path.suffix == ".gz":
                target = epath.Path(extract_dir) / path.stem
                with gzip.open(path, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                return target
            return path

    return LocalFiles(**kwargs)
