"""The fuzz table's damaged and odd checkpoints, and bad arguments naming one.

A checkpoint whose files no longer match what was saved (a missing, cut, flipped, emptied or
replaced checksum file, format record or item) is never restored: it is moved, whole and as it
was, to `checkpoints-damaged/`, with one line naming it, and `latest` falls back to the one
before. Entries of `checkpoints/` that descent did not write are ignored with a warning, never
moved. A bad `--checkpoint`, `--split` or `--weights` is one line, nothing touched.
"""
import json
import os
import shutil
import zlib

import numpy as np
import pytest

from fuzz import (Case, check, descent, make_places, snapshot,  # noqa: F401
                  trained_workdir)
from train import checkpoint

NEWEST = "checkpoints/78"


def _at(places, relative: str) -> str:
    return os.path.join(places.workdir, relative)


def write(relative: str, data: bytes):
    def plant(places):
        with open(_at(places, relative), "wb") as f:
            f.write(data)
    return plant


def remove(relative: str):
    def plant(places):
        os.remove(_at(places, relative))
    return plant


def cut(relative: str):
    def plant(places):
        path = _at(places, relative)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    return plant


def flip(relative: str):
    """One bit flipped in the middle of `relative` (the largest state file for "state/*")."""
    def plant(places):
        path = _at(places, relative)
        if relative.endswith("*"):
            folder = os.path.dirname(path)
            path = max((os.path.join(r, n) for r, _, names in os.walk(folder) for n in names),
                       key=os.path.getsize)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x10]))
    return plant


def both(*plants):
    def plant(places):
        for p in plants:
            p(places)
    return plant


def recorded(relative: str, data: bytes):
    """`relative` (inside the newest checkpoint) replaced by `data` and its checksum recorded
    anew: a checkpoint that verifies, holding what this descent cannot use."""
    def plant(places):
        directory = _at(places, NEWEST)
        write(f"{NEWEST}/{relative}", data)(places)
        sums = os.path.join(directory, checkpoint.CHECKSUMS)
        with open(sums) as f:
            record = json.load(f)
        with open(os.path.join(directory, relative), "rb") as f:
            record[relative] = f"{zlib.crc32(f.read()):08x}"
        with open(sums, "w") as f:
            json.dump(record, f)
    return plant


def config_naming(model: str) -> bytes:
    def data(places) -> bytes:
        with open(_at(places, f"{NEWEST}/config/metadata")) as f:
            saved = json.load(f)
        saved["model"]["name"] = model
        return json.dumps(saved).encode()
    return data


def as_checksummed_after_commit(places):
    """The newest checkpoint as descent wrote them from 2026-11-25 until format 2: checksums,
    no format record."""
    os.remove(_at(places, FORMAT))
    with open(_at(places, SUMS)) as f:
        record = json.load(f)
    del record[checkpoint.FORMAT]
    with open(_at(places, SUMS), "w") as f:
        json.dump(record, f)


def unknown_model(places):
    recorded("config/metadata", config_naming("no-such-net")(places))(places)


def stray(name: str, kind: str = "dir"):
    """An entry in `checkpoints/` that is not a checkpoint descent wrote."""
    def plant(places):
        path = _at(places, f"checkpoints/{name}")
        if kind == "dir":
            shutil.copytree(_at(places, "checkpoints/39"), path)
        else:
            with open(path, "wb") as f:
                f.write(b"not a checkpoint\n")
    return plant


SUMS = f"{NEWEST}/{checkpoint.CHECKSUMS}"
FORMAT = f"{NEWEST}/{checkpoint.FORMAT}"
EVAL = ["eval", "--workdir", "{workdir}", "--checkpoint"]

# Damage to the newest checkpoint: (name, plant, the reason the line names). Asked for by its
# step, each is refused with exit code 2; asked for as `latest`, the one before is evaluated.
DAMAGE = [
    ("checksums-missing", remove(SUMS), "is missing"),
    ("checksums-cut", cut(SUMS), "cannot be read"),
    ("checksums-empty", write(SUMS, b""), "cannot be read"),
    ("checksums-flipped-bit", flip(SUMS), ""),  # cut JSON, or another name or sum
    ("checksums-random-bytes", write(SUMS, bytes(range(256)) * 4), "cannot be read"),
    ("checksums-empty-record", write(SUMS, b"{}"), "not a record"),
    ("checksums-a-list", write(SUMS, b"[1, 2]"), "not a record"),
    ("checksums-numbers", write(SUMS, b'{"state/_METADATA": 1}'), "not a record"),
    ("checksums-of-other-files", write(SUMS, b'{"elsewhere": "00000000"}'),
     "elsewhere is missing"),
    ("format-missing", remove(FORMAT), f"{checkpoint.FORMAT} is missing"),
    ("format-garbage", write(FORMAT, b"\x00\xff garbage"), checkpoint.FORMAT),
    ("format-says-predates-checksums", write(FORMAT, b'{"format": 1}'), checkpoint.FORMAT),
    ("config-missing", remove(f"{NEWEST}/config/metadata"), "config/metadata is missing"),
    ("config-garbage", write(f"{NEWEST}/config/metadata", b"{]"), "config/metadata"),
    ("data-position-garbage", write(f"{NEWEST}/data/metadata", b"\x00" * 9), "data/metadata"),
    ("dataset-garbage", write(f"{NEWEST}/dataset/metadata", b"[]"), "dataset/metadata"),
    ("metrics-garbage", write(f"{NEWEST}/metrics/metrics", b"nan"), "metrics/metrics"),
    ("state-metadata-garbage", write(f"{NEWEST}/state/_METADATA", b"{}"), "state/_METADATA"),
    ("state-metadata-missing", remove(f"{NEWEST}/state/_METADATA"), "state/_METADATA"),
    ("state-manifest-cut", cut(f"{NEWEST}/state/manifest.ocdbt"), "state/manifest.ocdbt"),
    ("state-data-flipped-bit", flip(f"{NEWEST}/state/*"), "does not match its checksum"),
    ("state-flipped-and-checksums-missing", both(flip(f"{NEWEST}/state/*"), remove(SUMS)),
     "is missing"),
    ("a-file-planted-inside", write(f"{NEWEST}/state/extra", b"x"), "state/extra"),
]


def _damage_rows() -> list[Case]:
    rows = []
    for name, plant, reason in DAMAGE:
        rows.append(Case(f"eval-78-{name}", EVAL + ["78"], plant=plant,
                         names=("step 78 cannot be read", "checkpoints-damaged/78-", reason)))
    for name, plant, reason in DAMAGE[::4]:  # falling back: the same check, then step 39
        rows.append(Case(f"eval-latest-{name}", EVAL + ["latest"], code=0, plant=plant,
                         names=("step 78 cannot be read", "falling back", reason)))
    return rows


def check_set_aside(case: Case, places) -> None:
    """As `fuzz.check`, but the damaged checkpoint is moved: the newest is in
    `checkpoints-damaged/` exactly as it was after the damage, and nothing else changed."""
    case.plant(places)
    checkpoints, damaged = _at(places, "checkpoints"), _at(places, "checkpoints-damaged")
    before, outside = snapshot(checkpoints), snapshot(places.outside)
    result = descent(places.fill(case.argv))
    assert result.code == case.code, (result.code, result.err[-2000:])
    assert len(result.lines) == 1 and "Traceback" not in result.err, result.err[-2000:]
    for word in places.fill(case.names):
        assert word in result.lines[0], (word, result.lines[0])
    if case.code == 0:
        assert result.out.startswith("checkpoint step 39: "), result.out
    [aside] = os.listdir(damaged)
    moved = {os.path.join("78", k): v for k, v in snapshot(os.path.join(damaged, aside)).items()}
    moved["78"] = ("dir",)
    assert snapshot(checkpoints) == {k: v for k, v in before.items() if k not in moved}
    assert moved == {k: v for k, v in before.items() if k == "78" or k.startswith("78/")}
    assert snapshot(places.outside) == outside


def _with_rows(places):
    np.save(os.path.join(places.tmp, "rows.npy"), np.zeros((2, 64), np.float32))


# Refused with nothing touched: bad arguments naming a checkpoint, and checkpoints this descent
# cannot use; and the layouts it reads as they are.
REFUSED = [
    Case("checkpoint-negative", EVAL + ["-5"], names=("no checkpoint at step -5", "39, 78")),
    Case("checkpoint-huge", EVAL + ["9" * 25], names=("no checkpoint at step 999", "39, 78")),
    Case("checkpoint-not-saved", EVAL + ["40"], names=("no checkpoint at step 40", "39, 78")),
    Case("checkpoint-float", EVAL + ["1e3"], names=("'1e3' is not 'best', 'latest' or a step",)),
    Case("checkpoint-word", EVAL + ["newest"], names=("'newest' is not", "39, 78")),
    Case("checkpoint-empty", EVAL + [""], names=("'' is not", "39, 78")),
    Case("checkpoint-spaced", EVAL + [" 39"], names=("' 39' is not",)),
    Case("checkpoint-arabic-digits", EVAL + ["٣٩"], names=(r"'\u0663\u0669' is not",)),
    Case("checkpoint-escape-sequence", EVAL + ["\x1b[31m"], names=(r"'\x1b[31m' is not",)),
    Case("split-unknown", EVAL + ["78", "--split", "holdout"],
         names=("no split 'holdout'", "train, validation, test")),
    Case("weights-ema-without-ema", EVAL + ["78", "--weights", "ema"],
         names=("no moving average", "ema_decay")),
    Case("weights-unknown", EVAL + ["78", "--weights", "mean"], names=("--weights", "'mean'")),
    Case("data-path-for-data-without-files", EVAL + ["78", "--data-path", "{tmp}"],
         names=("--data-path", "digits, reads no files")),
    Case("predict-checkpoint-negative", ["predict", "{tmp}/rows.npy", "--workdir", "{workdir}",
                                         "--checkpoint", "-1"], plant=_with_rows,
         names=("no checkpoint at step -1",)),
    Case("sample-checkpoint-word", ["sample", "--workdir", "{workdir}", "--prompt", "A",
                                    "--checkpoint", "first"], names=("'first' is not",)),
    Case("eval-no-checkpoints", ["eval", "--workdir", "{tmp}"], names=("no checkpoints",)),
    Case("eval-workdir-missing", ["eval", "--workdir", "{outside}/none"],
         names=("no checkpoints", "{outside}/none")),
    Case("format-newer", EVAL + ["78"], plant=recorded("descent-format.json", b'{"format": 3}'),
         names=("format version 3", "newer descent")),
    # read, not refused: layouts of earlier descents, and one a person vouches for
    Case("checksummed-without-format-record", EVAL + ["78"], code=0,
         plant=as_checksummed_after_commit),
    Case("format-1-without-checksums", EVAL + ["78"], code=0,
         plant=both(remove(SUMS), write(FORMAT, b'{"format": 1}'))),
    Case("config-of-an-unknown-net", EVAL + ["78"], plant=unknown_model,
         names=("step 78", "no-such-net")),
]

# Names Python's int() reads as a step, and orbax does not write
STRAYS = [("arabic-digits", "١٢٣", r"\u0661\u0662\u0663"), ("leading-zero", "0039", "0039"),
          ("plus-sign", "+100", "+100"), ("trailing-space", "100 ", "100 ")]


def _stray_rows() -> list[Case]:
    """Entries of checkpoints/ descent did not write: ignored with a warning, never moved."""
    rows = [Case(f"stray-dir-{kind}", EVAL + ["latest"], code=0, plant=stray(name),
                 names=(shown,)) for kind, name, shown in STRAYS]
    rows.append(Case("stray-file-named-as-a-step", EVAL + ["latest"], code=0,
                     plant=stray("100", "file"), names=("checkpoints/100",)))
    return rows


def check_warned(case: Case, places) -> None:
    """`fuzz.check` of a command that goes on (the newest checkpoint evaluated), with one
    warning naming what it ignored."""
    result = check(case, places)
    assert len(result.lines) == 1 and "is not a checkpoint descent wrote" in result.lines[0]
    for word in case.names:
        assert word in result.lines[0], (word, result.lines[0])
    assert result.out.startswith("checkpoint step 78: "), result.out


CASES = _damage_rows() + REFUSED + _stray_rows()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_damaged_or_odd_checkpoint_or_argument_is_named_and_nothing_else_moves(
        case, tmp_path, trained_workdir):
    places = make_places(tmp_path, trained_workdir)
    if case.name.startswith(("eval-78-", "eval-latest-")):
        check_set_aside(case, places)
    elif case.name.startswith("stray-"):
        check_warned(case, places)
    else:
        check(case, places)
