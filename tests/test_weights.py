"""`descent import` and `descent export` as a user runs them: a Hugging Face GPT-2 and a
torchvision ResNet, built here with random weights (nothing downloaded), become work
directories that fine-tune (`init_from`) and export back to files their libraries load with
the same logits; bad input is one line, exit 2, with nothing written."""
import fractions
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import torchvision
import transformers

from experiments.cli import main
from experiments.run import train_and_evaluate
from experiments.config import model_fields
from train import checkpoint
from train.state import named

from conftest import config_path
from helpers import tiny_config
from test_cli import checkpoint_bytes, error_of


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A small GPT-2 folder as save_pretrained writes it, and a ResNet-18 state dict for 10
    classes as safetensors and as torch.save's pickle."""
    root = tmp_path_factory.mktemp("made")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=97, bos_token_id=0,
        eos_token_id=0)).eval()
    gpt2.save_pretrained(root / "gpt2")
    resnet = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    safetensors.torch.save_file(resnet.state_dict(), root / "resnet18.safetensors")
    torch.save(resnet.state_dict(), root / "resnet18.pth")
    return root, gpt2, resnet


def test_a_gpt2_imports_fine_tunes_and_exports_to_what_transformers_loads(capsys, made,
                                                                           tmp_path):
    root, gpt2, _ = made
    workdir, out = tmp_path / "gpt2", tmp_path / "exported"
    assert main(["import", "hf-gpt2", str(root / "gpt2"), "--workdir", str(workdir)]) == 0
    assert "as model.name=gpt (108,352 parameters, 97 outputs)" in capsys.readouterr().out
    assert main(["export", str(workdir), "--out", str(out)]) == 0
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, gpt2(ids).logits)  # the same arrays, bit for bit
    ours = safetensors.numpy.load_file(out / "model.safetensors")
    theirs = safetensors.numpy.load_file(root / "gpt2" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_a_resnet_imports_from_either_file_and_a_fine_tune_starts_from_it(capsys, made,
                                                                          tmp_path):
    root, _, resnet = made
    for name in ("resnet18.safetensors", "resnet18.pth"):
        workdir = tmp_path / name
        assert main(["import", "torchvision-resnet", str(root / name), "--arch", "resnet18",
                     "--workdir", str(workdir)]) == 0
        assert "as model.name=resnet18 (11,181,642 parameters, 10 outputs)" in \
            capsys.readouterr().out
        assert main(["export", str(workdir), "--out", str(tmp_path / f"{name}-out")]) == 0
        exported = safetensors.torch.load_file(tmp_path / f"{name}-out" / "model.safetensors")
        fresh = torchvision.models.resnet18(weights=None, num_classes=10)
        fresh.load_state_dict(exported, strict=True)
        for key, value in resnet.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key
    imported = str(tmp_path / "resnet18.pth")
    code, err = error_of(capsys, "eval", "--workdir", imported)
    assert code == 2 and "holds imported weights (torchvision ResNet-18 " in err
    code, err = error_of(capsys, "sample", "--workdir", imported, "--prompt", "x")
    assert code == 2 and "without a tokenizer to sample text with" in err
    # digits are 8x8 grey: the stem (3 colour channels) and nothing else starts fresh, and
    # the frozen blocks stay the imported ones
    config = tiny_config("digits_cnn.py", **{
        "init_from": str(tmp_path / "resnet18.safetensors"), "optimizer.freeze": "blocks/*",
        "steps": 2, "parallel.mesh": "data=1"})
    config.model = model_fields("resnet18")
    summary = train_and_evaluate(config, str(tmp_path / "tuned"), console=False)
    manager = checkpoint.open_manager(str(tmp_path / "resnet18.safetensors"), read_only=True)
    imported = checkpoint.read_arrays(manager, 0)
    tuned = {k: np.asarray(v) for k, v in named(summary["state"].params).items()}
    blocks = [k for k in tuned if k.startswith("blocks/")]
    assert blocks and all(np.array_equal(tuned[k], imported[f"params/{k}"]) for k in blocks)
    assert tuned["stem_conv/kernel"].shape == (7, 7, 1, 64)


ROMEO = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and "
         "Juliet is the sun.\n")


@pytest.fixture(scope="module")
def gpt2_with_tokenizer(tmp_path_factory):
    """A GPT-2 folder as the hub lays one out: the model (2 layers, width 64, 64 positions,
    300 tokens, weights far from their start so greedy text moves) and its tokenizer's
    vocab.json and merges.txt (a byte-level BPE trained here on a line of Shakespeare)."""
    from tokenizers import ByteLevelBPETokenizer
    folder = tmp_path_factory.mktemp("gpt2-with-tokenizer")
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([ROMEO] * 50, vocab_size=300,
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.save_model(str(folder))
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300, bos_token_id=0,
        eos_token_id=0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(folder)
    return folder, model, tokenizer


def test_an_imported_gpt2_with_its_tokenizer_samples_what_transformers_generates(
        capsys, gpt2_with_tokenizer, tmp_path):
    """Greedy decoding, which the two compute the same way: descent's cached sampler against
    transformers' generate, from text through GPT-2's own tokenizer layout and back."""
    folder, model, tokenizer = gpt2_with_tokenizer
    assert main(["import", "hf-gpt2", str(folder), "--workdir", str(tmp_path / "w")]) == 0
    capsys.readouterr()
    assert main(["sample", "--workdir", str(tmp_path / "w"), "--prompt", "ROMEO: But",
                 "--length", "16", "--temperature", "0"]) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    ids = tokenizer.encode("ROMEO: But").ids
    with torch.no_grad():
        drawn = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                               pad_token_id=0)[0, len(ids):].tolist()
    assert len(drawn) == 16 and len(set(drawn)) > 1
    assert ours == "ROMEO: But" + tokenizer.decode(drawn, skip_special_tokens=False)


def test_gpt2_fine_tunes_on_text_prepared_with_its_own_tokenizer(capsys, gpt2_with_tokenizer,
                                                                 tmp_path):
    """The fine-tuning path of experiments/configs/gpt2_finetune.py, at its tiny size: import,
    prepare text with GPT-2's tokenizer, train from the import with the blocks stacked and
    scanned (model.scan_layers: GPT-2's blocks are stacked as they load), sample the result,
    export it back to GPT-2's layout."""
    folder = tmp_path / "gpt2-folder"  # GPT-2 as initialised: near its start, as trained
    folder.mkdir()  # weights are (the fixture's are far from it, for varied samples)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_with_tokenizer[0] / name, folder)
    torch.manual_seed(4)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300, bos_token_id=0,
        eos_token_id=0)).save_pretrained(folder)
    (tmp_path / "my.txt").write_text(ROMEO * 300)
    imported, prepared = str(tmp_path / "gpt2"), str(tmp_path / "data")
    assert main(["import", "hf-gpt2", str(folder), "--workdir", imported]) == 0
    assert main(["data", "prepare", "text", "mytext", "--files", str(tmp_path / "my.txt"),
                 "--tokenizer", f"gpt2:{folder}", "--data-dir", prepared]) == 0
    capsys.readouterr()
    assert main(["train", "--config", config_path("gpt2_finetune.py") + ":tiny", "--workdir",
                 str(tmp_path / "tuned"), f"--config.dataset.path={prepared}/mytext",
                 f"--config.init_from={imported}", "--config.model.scan_layers=true"]) == 0
    said = capsys.readouterr()
    assert "init_from: 16 of 16 arrays loaded from the checkpoint at step 0" in said.out
    assert "init_from: 12 of them stacked from layers saved one by one" in said.out
    records = _train_records(tmp_path / "tuned")
    assert records[0]["step"] == 1 and records[-1]["step"] == 40
    assert records[-1]["train_loss"] < records[0]["train_loss"] / 2  # one line, repeated
    assert main(["sample", "--workdir", str(tmp_path / "tuned"), "--prompt", "ROMEO:",
                 "--length", "12", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO: But ")  # the line it learnt, word for word (the last cut)
    assert set(out.split()[:-1]) <= set(ROMEO.split()) and len(out.split()) > 4, out
    assert main(["export", str(tmp_path / "tuned"), "--out", str(tmp_path / "out")]) == 0
    transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")  # every tensor, by shape
    exported = safetensors.numpy.load_file(tmp_path / "out" / "model.safetensors")
    tuned = checkpoint.read_arrays(checkpoint.open_manager(str(tmp_path / "tuned"),
                                                           read_only=True), 40)
    for i in range(2):
        assert np.array_equal(exported[f"transformer.h.{i}.mlp.c_fc.weight"],
                              tuned["params/blocks/up/kernel"][i])


def _train_records(workdir) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train_loss" in r]


@pytest.mark.parametrize("argv,message", [
    ("import hf-gpt2 MADE/nowhere --workdir W", "MADE/nowhere is not a directory"),
    ("import hf-gpt2 MADE --workdir W", "MADE has no config.json; a Hugging Face GPT-2 folder "
     "holds config.json and model.safetensors"),
    ("import hf-gpt2 MADE/no-weights --workdir W", "has no model.safetensors; descent reads "
     "safetensors, not pickles"),
    ("import hf-gpt2 MADE/short --workdir W", "h.1.mlp.c_proj.bias"),
    ("import hf-gpt2 MADE/misshapen --workdir W", "tensor transformer.ln_f.bias has shape (63,); "
     "descent's GPT expects (64,)"),
    ("import hf-gpt2 MADE/gelu --workdir W", "config.json has activation_function='gelu'"),
    ("import torchvision-resnet MADE/resnet18.safetensors --arch resnet50 --workdir W",
     "holds a ResNet-18's blocks, not those of resnet50"),
    ("import torchvision-resnet MADE/resnet18.safetensors --arch resnet9 --workdir W",
     "--arch 'resnet9' is not one of resnet18"),
    ("import torchvision-resnet MADE/gpt2/config.json --workdir W", "cannot be read as a "
     "PyTorch state dict"),
    ("import hf-gpt2 MADE/gpt2 --workdir TRAINED", "already holds checkpoints; import into a "
     "new --workdir"),
    ("export TRAINED --out W", "export writes a gpt run as a Hugging Face GPT-2 and a resnet "
     "run as torchvision's; this run's model is mlp"),
    ("export MADE/nowhere --out W", "no checkpoints in"),
    ("import torchvision-resnet MADE/code.pth --workdir W", "code.pth is not a state dict of "
     "tensors alone (PyTorch's restricted loader refused it): save model.state_dict()"),
    ("export TRAINED --out gs://bucket/W", "--out 'gs://bucket/W' is a URL; descent writes an "
     "export to a folder on this machine"),
    ("export TRAINED --out MADE/gpt2/config.json", "is a file; export into a new or empty "
     "folder"),
])
def test_bad_imports_and_exports_are_one_line_exit_2_and_write_nothing(
        capsys, made, tmp_path, argv, message):
    root = made[0]
    _plant(root)
    trained = tmp_path / "trained"
    assert main(["train", "--config", config_path("digits_mlp.py")
                 + ":tiny", "--workdir", str(trained), "--config.steps=2"]) == 0
    capsys.readouterr()
    before = checkpoint_bytes(trained)
    workdir = tmp_path / "new"
    fill = {"MADE": str(root), "TRAINED": str(trained), "W": str(workdir)}
    args = argv.split()
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    code, err = error_of(capsys, *args)
    assert code == 2 and message in err, err
    assert "weights_only" not in err  # PyTorch's advice to run the file's code is not repeated
    assert not workdir.exists() and not os.path.exists("gs:")  # no folder named like a URL
    assert checkpoint_bytes(trained) == before


def _plant(root) -> None:
    """GPT-2 folders that are wrong in one way each, beside the good one, and a PyTorch file
    that holds an object besides tensors (which unpickling would construct)."""
    if not (root / "code.pth").exists():
        torch.save({"fc.weight": fractions.Fraction(1, 3)}, root / "code.pth")
    good = safetensors.numpy.load_file(root / "gpt2" / "model.safetensors")
    config = json.loads((root / "gpt2" / "config.json").read_text())
    for name, tensors, changes in (
            ("no-weights", None, {}),
            ("short", {k: v for k, v in good.items() if "h.1.mlp.c_proj.bias" not in k}, {}),
            ("misshapen", {**good, "transformer.ln_f.bias": good["transformer.ln_f.bias"][:63]},
             {}),
            ("gelu", good, {"activation_function": "gelu"})):
        folder = root / name
        if folder.exists():
            continue
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        if tensors is not None:
            safetensors.numpy.save_file(tensors, folder / "model.safetensors")
