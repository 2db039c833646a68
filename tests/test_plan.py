"""`descent plan`: a config's memory per device and FLOPs per step, found without training or
allocating the model, on the 8 fake devices of the suite and on the devices it is told to make."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments.cli import main
from experiments.config import load_config, override
from experiments.run import build, train_and_evaluate
from train.plan import make_plan, report

from conftest import ROOT, config_path
from test_cli import error_of

GPT = config_path("shakespeare_gpt.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Text as byte tokens (257 of them), enough for batches of 1,024-token windows."""
    folder = tmp_path_factory.mktemp("corpus")
    text = folder / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 4000)
    assert main(["data", "prepare", "text", "bytes", "--files", str(text), "--tokenizer", "byte",
                 "--data-dir", str(folder)]) == 0
    return str(folder / "bytes")


def gpt2_small(corpus: str, *overrides: str, layers: int = 12) -> list[str]:
    """GPT-2 small's blocks and positions (12 layers, 12 heads, width 768, 1,024 tokens) over
    byte tokens, batch 8: the command-line overrides."""
    return [f"--config.model.layers={layers}", "--config.model.heads=12",
            "--config.model.width=768", "--config.model.context=1024", "--config.dataset.context=1024",
            "--config.dataset.batch_size=8", "--config.dataset.name=tokens",
            f"--config.dataset.path={corpus}", *overrides]


def plan_of(corpus: str, *overrides: str, layers: int = 12, compile: bool = True):
    config, _, rest = override(load_config(GPT), gpt2_small(corpus, *overrides, layers=layers))
    assert not rest
    model, dataset = build(config, deferred=True)
    return make_plan(config, model, dataset, compile)


@pytest.mark.parametrize("mesh", ["--config.parallel.strategy=fsdp",
                                  "--config.parallel.mesh=fsdp=4,tensor=2 "
                                  "--config.parallel.rules=vocab="])  # 257 tokens: whole
def test_8_devices_hold_an_eighth_of_the_state_on_each(corpus, mesh):
    alone = plan_of(corpus, "--config.parallel.mesh=data=1", compile=False)
    split = plan_of(corpus, *mesh.split(), compile=False)
    assert alone.devices == 1 and split.devices == 8
    # GPT-2 small has 124,439,808 parameters with its 50,257 tokens; here 257 (768 numbers each)
    assert alone.parameters == split.parameters == 124_439_808 - 50_000 * 768
    assert alone.params == 4 * alone.parameters  # float32, whole on the one device
    assert alone.optimizer == pytest.approx(2 * alone.params, rel=1e-3)  # AdamW's two moments
    for part in ("params", "optimizer"):  # arrays under 4,096 numbers stay whole: within 10 %
        assert getattr(split, part) == pytest.approx(getattr(alone, part) / 8, rel=0.1), part


def test_temporaries_and_flops_are_a_devices_share_of_the_step(corpus):
    alone = plan_of(corpus, "--config.parallel.mesh=data=1", layers=2)
    split = plan_of(corpus, "--config.parallel.strategy=fsdp", layers=2)
    assert split.batch * 8 == alone.batch  # the batch is split over the devices
    # XLA's temporaries of the step: a device computes an eighth of the batch
    assert split.temporaries < alone.temporaries / 4
    # a step of a GPT costs about 6 FLOPs per parameter and token, and attention on top
    tokens = 8 * 1024
    assert 6 * alone.parameters * tokens < alone.flops < 1.5 * 6 * alone.parameters * tokens
    assert split.flops == pytest.approx(alone.flops / 8, rel=0.05)


def test_remat_of_scanned_blocks_cuts_the_temporaries_of_gpt2_small_at_1024_tokens(corpus):
    """The 12-layer GPT at 1,024 tokens with its blocks scanned (model.scan_layers): with
    model.remat=block, the scan keeps each block's input for the backward pass instead of all
    of its activations, and XLA's plan of the step's temporaries shrinks by more than 2x
    (measured on CPU: 8.6x for a 384-wide GPT). A loop of blocks shows no saving on CPU: XLA's
    CPU compiler undoes the recomputation there (docs/scaling.md)."""
    plans = {remat: plan_of(corpus, "--config.parallel.mesh=data=1",
                            "--config.model.scan_layers=true", f"--config.model.remat={remat}")
             for remat in ("none", "block")}
    assert plans["none"].params == plans["block"].params
    assert plans["block"].temporaries * 2 < plans["none"].temporaries, (
        plans["block"].temporaries, plans["none"].temporaries)
    # XLA counts a loop's body once: a scanned step's FLOPs are not reported rather than 1/12
    assert plans["none"].flops is None and plans["block"].flops is None
    assert report(plans["block"])[-1] == ("FLOPs per step: not counted (the step runs a loop, "
                                          "whose body XLA counts once)")


def test_the_plan_says_whether_it_fits_and_names_what_would_make_it(capsys, corpus):
    argv = ["plan", "--config", GPT, *gpt2_small(corpus, layers=2)]
    assert main([*argv, "--device-memory", "80GB"]) == 0
    out = capsys.readouterr().out.splitlines()
    blocks = 10 * (12 * 768 * 768 + 13 * 768)  # the 10 blocks of 12 it lacks, biases and norms
    assert out[0] == (f"plan: gpt, {124_439_808 - 50_000 * 768 - blocks:,} parameters, batch 8, "
                      f"on 8 cpu device(s), mesh data=8, strategy dp")
    assert out[-1].startswith("fits in 80.00 GB per device (")
    assert main([*argv, "--device-memory", "100MiB"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("does not fit in 104.86 MB per device: it needs ")
    assert "--config.parallel.strategy=fsdp (the state split over the 8 devices" in last
    assert "--config.model.remat=block --config.model.scan_layers=true (each block's" in last
    assert "--config.loss.chunk=128 (the float32 logits made 128 positions at a time" in last


def test_devices_are_made_for_the_plan_in_a_process_of_its_own(corpus):
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "descent"), "plan", "--config",
         GPT + ":tiny", "--config.dataset.name=tokens", f"--config.dataset.path={corpus}",
         "--devices", "4", "--config.parallel.strategy=fsdp"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "on 4 cpu device(s), mesh fsdp=4, strategy fsdp" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("argv,message", [
    (["--device-memory", "lots"], "--device-memory 'lots' is not a size such as 80GB, 16GiB or "
     "512MB"),
    (["--device-memory", "0GB"], "--device-memory '0GB' must be a positive size such as 80GB"),
    (["--device-memory", "nanGB"], "--device-memory 'nanGB' is not a size"),
    (["--devices", "0"], "--devices 0 must be from 1 to 65,535"),
    (["--devices", "3"], "--devices 3: JAX started in this process with 8 cpu device(s); run "
     "`descent plan` in a process of its own"),
    (["--config.parallel.mesh=data=16"], "parallel.mesh='data=16' needs 16 devices but 8 cpu "
     "devices were found"),
    (["--config.model.remat=sometimes"], "unknown model.remat 'sometimes'; known: none, block"),
    (["--config.model.param_dtype=float16"], "unknown model.param_dtype 'float16'; known: "
     "float32, bfloat16"),
])
def test_bad_plans_are_one_line_exit_2(capsys, corpus, argv, message):
    import jax
    assert jax.device_count() == 8  # JAX has started: --devices cannot change this process's
    code, err = error_of(capsys, "plan", "--config", GPT + ":tiny", "--config.dataset.name=tokens",
                         f"--config.dataset.path={corpus}", *argv)
    assert code == 2 and message in err, err


def test_bfloat16_parameters_halve_the_state_and_train(corpus, tmp_path):
    """`model.param_dtype=bfloat16`: every parameter, and AdamW's moments with them, in half
    the bytes; a run of them still learns."""
    full = plan_of(corpus, "--config.parallel.mesh=data=1", compile=False)
    half = plan_of(corpus, "--config.parallel.mesh=data=1", "--config.model.param_dtype=bfloat16",
                   compile=False)
    assert half.params * 2 == full.params
    assert half.optimizer * 2 == pytest.approx(full.optimizer, abs=8)  # int32 counts: whole
    config, _, _ = override(load_config(GPT + ":tiny"), [
        "--config.dataset.name=tokens", f"--config.dataset.path={corpus}",
        "--config.model.param_dtype=bfloat16", "--config.model.dtype=bfloat16"])
    summary = train_and_evaluate(config, str(tmp_path / "run"), console=False)
    params = jax.tree.leaves(summary["state"].params)
    assert {x.dtype for x in params} == {jnp.dtype("bfloat16")}
    losses = [r["train_loss"] for r in summary["history"] if "train_loss" in r]
    assert losses[-1] < 0.7 * losses[0]  # from ln 257 = 5.5 towards the text's repetitions


def test_a_loop_over_matrix_products_is_found_and_a_random_number_loop_is_not():
    """What decides that a step's FLOPs go uncounted: XLA counts a loop's body once."""
    from train.trainer import loops_over_products

    def jaxpr(f, *args):
        return jax.jit(f).trace(*args).jaxpr.jaxpr

    x = jnp.ones((4, 4))
    assert loops_over_products(jaxpr(
        lambda x: jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=3)[0], x))
    assert loops_over_products(jaxpr(  # inside a jit inside a checkpoint
        jax.checkpoint(lambda x: jax.jit(lambda x: jax.lax.map(lambda r: r @ x, x))(x)), x))
    # a loop of integer arithmetic beside a product outside it (as XLA writes the rounds of
    # dropout's random bits), and the random bits themselves: nothing XLA would count short
    assert not loops_over_products(jaxpr(
        lambda x: (x @ x) * jax.lax.fori_loop(0, 5, lambda i, c: c + i, 0), x))
    assert not loops_over_products(jaxpr(
        lambda x, k: (x @ x) * jax.random.bernoulli(k, 0.5, x.shape), x, jax.random.key(0)))
