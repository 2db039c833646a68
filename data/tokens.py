"""Your text as tokens: a tokenizer trained offline with Hugging Face's `tokenizers`, the files
encoded once into memory-mapped token files, and windows of them read for training.

`prepare` writes a folder (`descent data prepare text NAME --files ...`):

    train.bin, validation.bin   token ids, uint16 (vocabularies up to 65,536) or uint32, the
                                layout nanoGPT's train.bin made common: each file's tokens,
                                then the end-of-text id, one file after another
    tokenizer.json              the tokenizer, as `tokenizers` saves it
    manifest.json               the tokenizer asked for, the vocabulary, the dtype, the
                                end-of-text id, and each split's token count and SHA-256

`tokens(path, context)` reads it: never the whole file, only the windows a batch needs, in an
order drawn by grain's lazy shuffle from (seed, epoch), so an epoch of a billion tokens costs
no permutation in memory. The tokenizer travels in the dataset's description, so `sample`
decodes text from the checkpoint alone.
"""
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

from data.arrays import Batch, Normalization
from data.batching import train_rows
from data.text import CharText

END = "<|endoftext|>"  # between documents, as GPT-2's tokenizer names it
SPLITS = ("train", "validation")
TOKENIZERS = ("bpe:SIZE", "byte", "char", "gpt2:DIR")
CHUNK = 1 << 22  # characters encoded at once, cut at a line's end: 4 MB of text per task
FORMAT = 1


def prepare(name: str, files: Sequence[str], tokenizer: str, data_dir: str, *,
            validation_fraction: float = 0.1, progress: bool = False) -> str:
    """Trains or loads `tokenizer` (bpe:SIZE, byte, char or gpt2:DIR) on `files`, encodes them
    and writes `<data_dir>/<name>/` (see the module's docstring); returns that folder. The
    last `validation_fraction` of each file (cut at a line's end) is validation text. The
    folder appears whole or not at all: it is written beside and renamed into place."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"{name!r} is not a dataset name: use letters, digits, '_', '-', '.'")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"--validation-fraction {validation_fraction} must be above 0 and "
                         f"below 1")
    if not files:
        raise ValueError("--files names no file; give the text files to train on")
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"{path} is not a file; --files takes text files")
        _check_utf8(path)
    target = os.path.join(data_dir, name)
    if os.path.lexists(target):
        raise ValueError(f"{target} exists; choose another NAME or remove it first")
    made = _tokenizer(tokenizer, files)
    os.makedirs(data_dir, exist_ok=True)
    work = tempfile.mkdtemp(dir=data_dir, prefix=f".{name}.")
    try:
        _write(made, files, work, tokenizer, validation_fraction, progress)
        os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _write(made, files: Sequence[str], work: str, tokenizer: str, validation_fraction: float,
           progress: bool) -> None:
    """The token files, the tokenizer and the manifest, into the folder `work`."""
    end = made.token_to_id(END)
    dtype = np.uint16 if made.get_vocab_size() <= 1 << 16 else np.uint32
    counts = dict.fromkeys(SPLITS, 0)
    outputs = {s: open(os.path.join(work, f"{s}.bin"), "wb") for s in SPLITS}
    try:
        bar = _bar(sum(os.path.getsize(p) for p in files), progress)
        for path in files:
            for split, (start, stop) in _ranges(path, validation_fraction).items():
                for texts in _chunks(path, start, stop):
                    for encoded in made.encode_batch(texts):
                        ids = np.asarray(encoded.ids, dtype)
                        outputs[split].write(ids.tobytes())
                        counts[split] += len(ids)
                    bar.update(sum(len(t.encode("utf-8")) for t in texts))
                outputs[split].write(np.asarray([end], dtype).tobytes())  # the document ends
                counts[split] += 1
        bar.close()
    finally:
        for f in outputs.values():
            f.close()
    made.save(os.path.join(work, "tokenizer.json"))
    manifest = {"format": FORMAT, "tokenizer": tokenizer, "vocab_size": made.get_vocab_size(),
                "dtype": np.dtype(dtype).name, "end_of_text": end,
                "files": [os.path.abspath(p) for p in files],
                "splits": {s: {"file": f"{s}.bin", "tokens": counts[s],
                               "sha256": _sha256(os.path.join(work, f"{s}.bin"))}
                           for s in SPLITS}}
    with open(os.path.join(work, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


@dataclasses.dataclass(frozen=True)
class Tokens:
    """A prepared token corpus: windows of `context` tokens, the next token the target at
    every position; the splits are memory maps of the token files."""
    name: str
    tokenizer_json: str
    vocab_size: int
    splits: dict  # split -> np.memmap of token ids
    context: int = 256
    fingerprint: dict = dataclasses.field(default_factory=dict)  # split -> SHA-256
    about: dict = dataclasses.field(default_factory=dict)

    task = "classification"  # of the next token, at every position
    class_names = ()  # the classes are token ids; the tokenizer names them
    unit = "tokens"  # what evaluation counts

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    @property
    def num_outputs(self) -> int:
        return self.vocab_size

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.context,)

    @property
    def tokenizer(self):
        return _from_json(self.tokenizer_json)

    def encode(self, text: str) -> np.ndarray:
        return encode(self.tokenizer, text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                     skip_special_tokens=False)

    # windows on a grid, counted and evaluated as a character text's are
    num_examples = CharText.num_examples
    steps_per_epoch = CharText.steps_per_epoch
    _windows_of = CharText._windows_of
    eval_batches = CharText.eval_batches
    _split = CharText._split

    def description(self) -> dict:
        return {"name": self.name, "task": self.task, "input_shape": [self.context],
                "classes": [], "outputs": self.vocab_size, "stored": "int32",
                "normalization": Normalization().record(), "text": "tokens",
                "tokenizer": self.tokenizer_json, "train_windows": self._windows_of("train"),
                "fingerprint": self.fingerprint, **self.about,
                "examples": {s: self.num_examples(s) for s in self.splits}}

    def summary(self) -> str:
        counts = ", ".join(f"{len(ids):,} {s}" for s, ids in self.splits.items())
        folder = self.about.get("options", {}).get("path", "")
        return (f"data: tokens of {folder} ({counts}), a vocabulary of {self.vocab_size:,}, "
                f"windows of {self.context}")

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, split: str = "train",
                      process_index: int = 0, process_count: int = 1, start: int = 0
                      ) -> Iterator[Batch]:
        """Windows on a grid shifted by a random offset each epoch, in an order grain draws
        lazily from (seed, epoch): batch i is the same in every process and every resume."""
        import grain

        ids = self._split(split)
        offset = int(np.random.default_rng([seed, epoch]).integers(self.context))
        count = (len(ids) - 1 - offset) // self.context
        order = _Lazy(grain.MapDataset.range(count).shuffle(seed=_mix(seed, epoch)))
        for _, idx in train_rows(order, batch_size, self.steps_per_epoch(batch_size, split),
                                 start=start, process_index=process_index,
                                 process_count=process_count):
            yield self._windows(ids, offset + idx * self.context)

    def _windows(self, ids: np.ndarray, starts: np.ndarray) -> Batch:
        """Only these windows of the memory map are read, as int32 ids."""
        chunk = np.stack([np.asarray(ids[s:s + self.context + 1], np.int32) for s in starts])
        return {"inputs": chunk[:, :-1], "targets": chunk[:, 1:]}


def tokens(path: str = "", context: int = 256) -> Tokens:
    """The token corpus `prepare` wrote into the folder `path`, its files checked against the
    manifest's sizes and checksums before anything is read from them."""
    if context < 1:
        raise ValueError(f"dataset.context={context} must be at least 1 (tokens a model reads "
                         f"at once)")
    if not path:
        raise ValueError("dataset.name=tokens reads a folder `descent data prepare text` "
                         "wrote: set --config.dataset.path=FOLDER")
    manifest_file = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_file):
        raise FileNotFoundError(f"{path} has no manifest.json; prepare it with `descent data "
                                f"prepare text NAME --files ...`")
    try:
        with open(manifest_file) as f:
            manifest = json.load(f)
        dtype, splits = np.dtype(manifest["dtype"]), manifest["splits"]
        with open(os.path.join(path, "tokenizer.json")) as f:
            tokenizer_json = f.read()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a prepared token folder ({type(e).__name__}: {e}); "
                         f"prepare it again") from None
    memmaps = {}
    for split in SPLITS:
        file = os.path.join(path, splits[split]["file"])
        size = os.path.getsize(file) if os.path.isfile(file) else -1
        if size != splits[split]["tokens"] * dtype.itemsize or \
                _sha256(file) != splits[split]["sha256"]:
            raise ValueError(f"{file} does not match its manifest (its size or SHA-256 "
                             f"differs): the tokens changed since they were prepared; prepare "
                             f"them again")
        memmaps[split] = np.memmap(file, dtype, mode="r")
    vocab = int(manifest["vocab_size"])
    return Tokens("tokens", tokenizer_json, vocab, memmaps, context,
                  {s: splits[s]["sha256"] for s in SPLITS})


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids of `text`; refused where the tokenizer would drop characters (a character
    vocabulary meeting one it does not hold)."""
    encoded = tokenizer.encode(text)
    ids = np.asarray(encoded.ids, np.int32)
    if tokenizer.decode(encoded.ids, skip_special_tokens=False) != text:
        held = {ch for ch in text if tokenizer.encode(ch).ids}
        missing = "".join(sorted(set(text) - held))
        raise ValueError(f"the tokenizer cannot encode {missing or text!r}: it holds no such "
                         f"characters; use only characters of its training text")
    return ids


def _tokenizer(spec: str, files: Sequence[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def byte_level(vocab_size):
        made = Tokenizer(models.BPE())
        made.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        made.decoder = decoders.ByteLevel()
        made.train(list(files), trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[END], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return made

    kind, _, arg = spec.partition(":")
    if kind == "bpe" and re.fullmatch(r"[0-9]{1,10}", arg):
        size = int(arg)
        if not 257 <= size <= 1 << 32:
            raise ValueError(f"--tokenizer {spec}: a byte-level BPE vocabulary holds the 256 "
                             f"bytes and {END}, so its size is from 257 to 4,294,967,296")
        return byte_level(size)
    if spec == "byte":
        return byte_level(257)
    if spec == "char":
        chars = sorted(set().union(*(_characters(p) for p in files)) - {END})
        made = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
        made.add_special_tokens([END])
        made.decoder = decoders.Fuse()
        return made
    if kind == "gpt2" and arg:
        for file in ("vocab.json", "merges.txt"):
            if not os.path.isfile(os.path.join(arg, file)):
                raise ValueError(f"--tokenizer {spec}: {arg} has no {file}; a GPT-2 tokenizer "
                                 f"folder holds vocab.json and merges.txt")
        return gpt2_tokenizer(arg)
    raise ValueError(f"--tokenizer {spec!r} is not one of {', '.join(TOKENIZERS)} (e.g. bpe:8192)")


def gpt2_tokenizer(folder: str):
    """GPT-2's tokenizer from its `vocab.json` and `merges.txt` in `folder`: byte-level BPE,
    no space added before a text, `<|endoftext|>` special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    made = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"),
                                          os.path.join(folder, "merges.txt")))
    made.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    made.decoder = decoders.ByteLevel()
    made.add_special_tokens([END])
    return made


def _from_json(text: str):
    from tokenizers import Tokenizer
    return Tokenizer.from_str(text)


def _ranges(path: str, validation_fraction: float) -> dict[str, tuple[int, int]]:
    """Byte ranges of file `path`'s splits: validation is its last `validation_fraction`,
    from the start of the line where that begins."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(int(size * (1 - validation_fraction)))
        f.readline()
        cut = min(f.tell(), size)
    return {"train": (0, cut), "validation": (cut, size)}


def _chunks(path: str, start: int, stop: int) -> Iterator[list[str]]:
    """The text of bytes `start` .. `stop` of `path` (both at a line's start), in chunks of
    whole lines, eight at a time: a batch for `encode_batch`'s threads."""
    with open(path, "rb") as f:
        f.seek(start)
        texts = []
        while f.tell() < stop:
            block = f.read(min(CHUNK, stop - f.tell()))
            if f.tell() < stop:  # to the end of the line: a line begun before `stop` ends there
                block += f.readline()
            texts.append(block.decode("utf-8"))
            if len(texts) == 8:
                yield texts
                texts = []
        if texts:
            yield texts


def _characters(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return set(f.read())


def _check_utf8(path: str) -> None:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{number} is not UTF-8 text; --files takes text files "
                                 f"in UTF-8") from None


def _sha256(path: str) -> str:
    """Read through the file (not a memory map, whose pages would count as this process's)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _mix(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 1]).integers(1 << 31))


class _Lazy:
    """A lazy order (grain's shuffled range) that `train_rows` slices like an array."""

    def __init__(self, order):
        self.order = order

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.array([self.order[i] for i in range(*rows.indices(len(self.order)))],
                        np.int64)


def _bar(total: int, shown: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc="encoding", disable=not shown,
                leave=False)
