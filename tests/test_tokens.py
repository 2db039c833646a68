"""Your text as tokens: `descent data prepare text` trains a tokenizer on real text (Tiny
Shakespeare) and writes token files; a GPT trains on them from the CLI and samples in a fresh
process with the data gone; windows are deterministic, resumable and split over processes; a
2 GB token file is never read into memory; bad input is one line, exit 2, nothing written."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from data import tokens
from experiments.cli import main

from conftest import ROOT, SHARED, config_path, xla_flags
from test_cli import error_of

SHAKESPEARE = os.path.join(SHARED, "tiny_shakespeare", "input.txt")
GPT = config_path("shakespeare_gpt.py") + ":tiny"


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The first 120,000 characters of Tiny Shakespeare, as a file of the reader's."""
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip(f"{SHAKESPEARE} is not here")
    path = tmp_path_factory.mktemp("text") / "shakespeare.txt"
    with open(SHAKESPEARE, encoding="utf-8") as f:
        path.write_text(f.read()[:120_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt2_folder(text, tmp_path_factory):
    """A GPT-2-style tokenizer folder (vocab.json, merges.txt), as GPT-2's own is laid out,
    from a byte-level BPE trained here (GPT-2's own would be downloaded)."""
    from tokenizers import ByteLevelBPETokenizer
    folder = tmp_path_factory.mktemp("gpt2-tokenizer")
    made = ByteLevelBPETokenizer()
    made.train([str(text)], vocab_size=400, special_tokens=["<|endoftext|>"],
               show_progress=False)
    made.save_model(str(folder))
    return folder


def run(*args, cwd):
    """The installed `descent`, in a fresh process, as a user runs it."""
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    script = os.path.join(os.path.dirname(sys.executable), "descent")
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.mark.parametrize("spec", ["bpe:300", "byte", "char", "gpt2"])
def test_every_tokenizer_writes_the_files_it_encodes_and_decodes_them_back(
        text, gpt2_folder, tmp_path, spec):
    spec = f"gpt2:{gpt2_folder}" if spec == "gpt2" else spec
    folder = tokens.prepare("corpus", [str(text)], spec, str(tmp_path))
    manifest = json.loads(open(os.path.join(folder, "manifest.json")).read())
    tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    raw = text.read_bytes()
    cut = raw.index(b"\n", int(len(raw) * 0.9)) + 1  # validation starts at a line's start
    end = tokenizer.token_to_id("<|endoftext|>")
    assert manifest["end_of_text"] == end and manifest["vocab_size"] == \
        tokenizer.get_vocab_size()
    for split, part in (("train", raw[:cut]), ("validation", raw[cut:])):
        stored = np.fromfile(os.path.join(folder, f"{split}.bin"), manifest["dtype"])
        assert stored.tolist() == tokenizer.encode(part.decode()).ids + [end], split
        assert manifest["splits"][split]["tokens"] == len(stored)
        assert manifest["splits"][split]["sha256"] == hashlib.sha256(
            open(os.path.join(folder, f"{split}.bin"), "rb").read()).hexdigest()
        assert tokenizer.decode(stored[:-1].tolist()) == part.decode()
    expected = {"bpe:300": 300, "byte": 257, "char": len(set(raw.decode())) + 1}
    assert manifest["vocab_size"] == expected.get(spec, 400)


def test_windows_are_a_function_of_seed_epoch_and_step_and_split_over_processes(text,
                                                                                 tmp_path):
    folder = tokens.prepare("corpus", [str(text)], "bpe:300", str(tmp_path))
    corpus = tokens.tokens(folder, context=16)
    ids = np.fromfile(os.path.join(folder, "train.bin"), np.uint16)
    first = list(corpus.train_batches(8, seed=3, epoch=1))
    assert len(first) == corpus.steps_per_epoch(8)
    again = list(corpus.train_batches(8, seed=3, epoch=1, start=5))  # a resume at batch 5
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first[5:], again))
    other = next(corpus.train_batches(8, seed=3, epoch=2))
    assert not np.array_equal(first[0]["inputs"], other["inputs"])
    halves = [next(corpus.train_batches(8, seed=3, epoch=1, process_index=p, process_count=2))
              for p in (0, 1)]
    assert np.array_equal(np.concatenate([h["inputs"] for h in halves]), first[0]["inputs"])
    for window, target in zip(first[0]["inputs"], first[0]["targets"]):
        starts = [s for s in range(len(ids) - 16) if np.array_equal(ids[s:s + 16], window)]
        assert starts and np.array_equal(ids[starts[0] + 1:starts[0] + 17], target)


def test_a_gpt_trains_on_prepared_tokens_and_samples_with_the_data_gone(text, tmp_path):
    prepared = run("data", "prepare", "text", "shakespeare", "--files", str(text),
                   "--tokenizer", "bpe:512", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.startswith("wrote runs/data/shakespeare: ")
    trained = run("train", "--config", GPT, "--workdir", "runs/gpt", "--config.dataset.name="
                  "tokens", "--config.dataset.path=runs/data/shakespeare", "--config.steps=30",
                  cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "tokens)" in trained.stdout.splitlines()[-1]  # "validation accuracy ... (N tokens)"
    shutil.rmtree(tmp_path / "runs" / "data")  # the tokenizer travels with the checkpoint
    sampled = run("sample", "--workdir", "runs/gpt", "--prompt", "ROMEO:", "--length", "20",
                  "--temperature", "0", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("ROMEO:") and len(sampled.stdout) > len("ROMEO:") + 10


def test_a_2_gb_token_file_trains_without_being_read_into_memory(text, tmp_path):
    """Peak resident memory of the same short run on 2 GB and on 2 MB of tokens: loading the
    file would add 2 GB; reading windows adds pages of it. (A descent training process
    itself peaks near 1 GB on this CPU, most of it XLA: the difference is what the data
    costs.)"""
    small = tokens.prepare("small", [str(text)], "bpe:300", str(tmp_path))
    peaks = {}
    for name, count in (("small", 1 << 20), ("big", 1 << 30)):
        folder = tmp_path / f"{name}-tokens"
        folder.mkdir()
        shutil.copy(os.path.join(small, "tokenizer.json"), folder)
        shutil.copy(os.path.join(small, "validation.bin"), folder)
        # token i is (i * 7919) % 300, written and hashed 60 MB at a time: a block of a
        # multiple of 300 tokens repeats, so it is computed once (the test stays small too)
        block = ((np.arange(300 * 100_000, dtype=np.int32) % 300) * 7919 % 300).astype(np.uint16)
        digest = hashlib.sha256()
        with open(folder / "train.bin", "wb") as f:
            for start in range(0, count, len(block)):
                part = block[:count - start].tobytes()
                f.write(part)
                digest.update(part)
        manifest = json.loads(open(os.path.join(small, "manifest.json")).read())
        manifest["splits"]["train"] = {"file": "train.bin", "tokens": count,
                                       "sha256": digest.hexdigest()}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        code = ("import sys; from experiments.cli import main; "
                f"code = main(['train', '--config', {GPT!r}, '--workdir', "
                f"{str(tmp_path / name)!r}, '--config.dataset.name=tokens', "
                f"'--config.dataset.path={folder}', "
                "'--config.steps=4', '--config.log.tensorboard=false']); "
                "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); "
                "sys.exit(code)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "XLA_FLAGS": xla_flags()},
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        # VmHWM, this process's own peak: getrusage's maxrss would start from the peak of
        # the process that forked it (this one, which wrote the file through a memory map)
        peaks[name] = int(done.stdout.split()[-1]) * 1024  # kilobytes
    assert os.path.getsize(tmp_path / "big-tokens" / "train.bin") == 2 << 30
    assert peaks["big"] - peaks["small"] < 200 << 20, peaks


@pytest.mark.parametrize("args,message", [
    ("data prepare text c --files TEXT --tokenizer bpe:100", "--tokenizer bpe:100: a byte-level "
     "BPE vocabulary holds the 256 bytes and <|endoftext|>, so its size is from 257"),
    ("data prepare text c --files TEXT --tokenizer wordpiece", "--tokenizer 'wordpiece' is not "
     "one of bpe:SIZE, byte, char, gpt2:DIR"),
    ("data prepare text c --files TEXT --tokenizer gpt2:TMP/vocab-only", "has no merges.txt; "
     "a GPT-2 tokenizer folder holds vocab.json and merges.txt"),
    ("data prepare text c --files TMP/nowhere.txt", "nowhere.txt is not a file"),
    ("data prepare text c --files BINARY", "is not UTF-8 text"),
    ("data prepare text c --files TEXT --validation-fraction 0", "--validation-fraction 0.0 "
     "must be above 0 and below 1"),
    ("data prepare text c --files TEXT --validation-fraction nan", "--validation-fraction nan"),
    ("data prepare text c --files TEXT --validation-fraction 1", "must be above 0 and below 1"),
    ("data prepare text ../c --files TEXT", "'../c' is not a dataset name"),
    ("data prepare text --files TEXT", "data prepare text needs a name and the files"),
    ("data prepare text c", "data prepare text needs a name and the files"),
    ("data prepare mnist --files TEXT", "--files applies to `descent data prepare text"),
    ("data prepare text c --files TEXT --manual-dir TMP", "--manual-dir applies to tfds "
     "datasets; text reads --files"),
    ("data prepare text c --files gs://bucket/a.txt", "is a URL"),
])
def test_bad_text_preparation_is_one_line_exit_2_and_writes_nothing(capsys, text, tmp_path,
                                                                    args, message):
    (tmp_path / "binary.txt").write_bytes(b"text\n\xff\xfe\n")
    (tmp_path / "vocab-only").mkdir()
    (tmp_path / "vocab-only" / "vocab.json").write_text('{"a": 0}')
    fill = {"TEXT": str(text), "TMP": str(tmp_path), "BINARY": str(tmp_path / "binary.txt")}
    argv = [fill.get(a, a) for a in args.split()]
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    message = message.replace("TMP", str(tmp_path))
    code, err = error_of(capsys, *argv, "--data-dir", str(tmp_path / "out"))
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_tokens_that_changed_since_prepared_are_refused_naming_the_file(capsys, text,
                                                                       tmp_path):
    folder = tokens.prepare("corpus", [str(text)], "bpe:300", str(tmp_path))
    with open(os.path.join(folder, "train.bin"), "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x00")
    code, err = error_of(capsys, "train", "--config", GPT, "--workdir", str(tmp_path / "run"),
                         "--config.dataset.name=tokens", f"--config.dataset.path={folder}")
    assert code == 2 and "train.bin does not match its manifest" in err, err
    assert not (tmp_path / "run").exists()
    code, err = error_of(capsys, "train", "--config", GPT, "--workdir", str(tmp_path / "run"),
                         "--config.dataset.name=tokens")
    assert code == 2 and "set --config.dataset.path=FOLDER" in err, err
    code, err = error_of(capsys, "train", "--config", config_path("digits_mlp.py") + ":tiny",
                         "--workdir", str(tmp_path / "run"), "--config.dataset.name=tokens",
                         f"--config.dataset.path={tmp_path}")
    assert code == 2 and "has no manifest.json" in err, err
