"""The model zoo: exact parameter counts, shapes, dtypes, causality, and learning real text."""
import functools
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import data
import nets
from nets.resnet import Block
from train.optimizers import decay_mask, learning_rate_schedule
from train.trainer import Trainer

from conftest import config_path
from helpers import tiny_config
from test_cli import descent, error_of

# Trainable parameters of the reference implementations at 1,000 classes (torchvision's
# resnet*, batch-norm running statistics excluded) and of GPT-2 small (Radford et al. 2019).
REFERENCE_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
GPT2_SMALL = 124_439_808

# Every net, small: (input shape, classes, fields). ResNet-101 and -152 are ResNet-50's blocks
# in greater number: their parameter counts are tested, their shapes and dtypes are not again.
SMALL = {
    "mlp": ((8, 8, 1), 10, dict(width=16)),
    "cnn": ((8, 8, 1), 10, dict(channels=(4, 8), dense=16, batch_norm=True)),
    "resnet18": ((16, 16, 3), 10, dict(stem="cifar", width=4)),
    "resnet34": ((32, 32, 3), 10, dict(width=4)),
    "resnet50": ((32, 32, 3), 10, dict(width=4)),
    "gpt": ((16,), 20, dict(layers=2, heads=2, width=32)),
    "bert": ((8, 8, 1), 10, dict(layers=2, heads=2, width=32)),
    "lstm": ((16,), 20, dict(hidden=24, embed=8)),
    "gru": ((16,), 20, dict(hidden=24, embed=8)),
    "rnn": ((16,), 20, dict(hidden=24, embed=8)),
    "speednet": ((16, 16, 3), 10, dict(widths=(4, 8), stem_width=4)),
}


def small(name, **fields):
    shape, classes, defaults = SMALL[name]
    model = nets.build(name, input_shape=shape, num_classes=classes, **{**defaults, **fields})
    rng = np.random.default_rng(0)
    if len(shape) == 1:
        x = rng.integers(0, classes, (2, *shape)).astype(np.int32)
    else:
        x = rng.normal(size=(2, *shape)).astype(np.float32)
    return model, jnp.asarray(x)


def test_every_registered_net_is_covered_here():
    assert set(nets.NETS) - set(SMALL) == {"resnet101", "resnet152"}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_resnet_parameter_counts_equal_the_reference(name):
    assert nets.count_params(name, (224, 224, 3), 1000) == REFERENCE_COUNTS[name]


def test_gpt2_small_has_exactly_124_439_808_parameters():
    assert nets.count_params("gpt", (1024,), 50257, layers=12, heads=12, width=768) == GPT2_SMALL


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_recurrent_parameter_counts_follow_the_cell_equations(cell, gates):
    # per layer: gates x (input weights + recurrent weights + input bias + recurrent bias)
    vocab, embed, hidden = 65, 32, 48
    layer = lambda d: gates * (d * hidden + hidden * hidden + 2 * hidden)  # noqa: E731
    expected = vocab * embed + layer(embed) + layer(hidden) + hidden * vocab + vocab
    assert nets.count_params(cell, (10,), vocab, layers=2, hidden=hidden, embed=embed) == expected


def matmul_operand_dtypes(fn, *args) -> set:
    """The dtypes of every matmul and convolution operand in `fn`'s computation, sub-computations
    (scans, nested jits) included."""
    dtypes = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                dtypes.update(str(v.aval.dtype) for v in eqn.invars)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return dtypes


@pytest.mark.parametrize("name", sorted(SMALL))
def test_output_shapes_and_float32_logits_in_both_compute_dtypes(name):
    shape, classes, _ = SMALL[name]
    for dtype in ("float32", "bfloat16"):
        model, x = small(name, dtype=dtype)
        params = nnx.state(model, nnx.Param)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)), "params stay float32"
        graphdef, state = nnx.split(model)
        # traced, not run: run op by op, each op of a ResNet-50 compiles on its own (~12 s)
        y = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, x)
        assert y.dtype == jnp.float32
        assert y.shape == ((2, *shape, classes) if len(shape) == 1 else (2, classes))
        # every matmul and convolution runs in the compute dtype, none silently in another,
        # traced as the training step does (batch norm updates)
        train = lambda s, x: nnx.merge(graphdef, s)(x, train=True, rngs=jax.random.PRNGKey(0))  # noqa: E731
        assert matmul_operand_dtypes(train, state, x) == {dtype}


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru", "rnn"])
def test_language_models_are_causal(name):
    """The logits at position t do not change when any input after t changes."""
    model, x = small(name)
    t = 7
    changed = x.at[:, t + 1:].set((x[:, t + 1:] + 1) % SMALL[name][1])
    before, after = model(x), model(changed)
    np.testing.assert_allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-6)
    assert not np.allclose(before[:, t + 1:], after[:, t + 1:], atol=1e-6)


def test_the_encoder_attends_both_ways():
    model, x = small("bert")
    changed = x.at[:, -1].add(1.0)  # only the last row of the image
    assert not np.allclose(model(x), model(changed), atol=1e-6)


@pytest.mark.parametrize("name", ["gpt", "bert", "lstm", "mlp", "cnn"])
def test_dropout_is_keyed_and_off_in_evaluation(name):
    model, x = small(name, dropout=0.5)
    without_dropout, _ = small(name, dropout=0.0)  # the same parameters (same seed)
    np.testing.assert_allclose(model(x, train=False), without_dropout(x, train=False), atol=1e-6)
    a = model(x, train=True, rngs=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, model(x, train=True, rngs=jax.random.PRNGKey(1)))
    assert not np.array_equal(a, model(x, train=True, rngs=jax.random.PRNGKey(2)))


def test_each_dropout_layer_draws_its_own_mask():
    width = 2048
    model = nets.build("mlp", input_shape=(width,), num_classes=width, depth=2, width=width,
                       dropout=0.5)
    for layer in (*model.hidden, model.head):  # every layer passes its input through unchanged
        layer.kernel[...] = jnp.eye(width)
        layer.bias[...] = jnp.zeros(width)
    out = model(jnp.ones((1, width)), train=True, rngs=jax.random.PRNGKey(0))
    # ones -> dropout -> dropout: a unit survives both with p 1/4 if the masks are independent,
    # 1/2 if one key is reused for both
    assert 0.2 < float(jnp.mean(out != 0)) < 0.3


def test_zero_init_residual_starts_each_block_as_the_identity():
    block = Block(8, 8, 1, bottleneck=False, zero_init=True, activation="relu",
                  dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 8))
    np.testing.assert_allclose(block(x, train=True), jax.nn.relu(x), atol=1e-6)
    plain = Block(8, 8, 1, bottleneck=False, zero_init=False, activation="relu",
                  dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert not np.allclose(plain(x, train=True), jax.nn.relu(x), atol=1e-3)


def test_resnet_v1_5_strides_on_the_3x3_convolution():
    model = nets.build("resnet50", input_shape=(64, 64, 3), num_classes=10, width=4)
    first_of_stage_2 = model.blocks[3]  # after stage 1's three blocks
    strides = [conv.strides for conv in first_of_stage_2.convs]
    assert [conv.kernel_size for conv in first_of_stage_2.convs] == [(1, 1), (3, 3), (1, 1)]
    assert strides == [1, 2, 1] and first_of_stage_2.shortcut_conv.strides == 2


def test_the_cifar_stem_matches_the_reference_cifar_resnet18():
    # 3x3 stem, no max-pool, 10 classes: the widely used CIFAR ResNet-18 has 11,173,962
    assert nets.count_params("resnet18", (32, 32, 3), 10, stem="cifar") == 11_173_962


class NextIsSumOfLastTwo(nnx.Module):
    """A causal 'language model' over 10 tokens: at position t it predicts ids[t-1] + ids[t]
    (mod 10), with certainty."""

    def __call__(self, ids_BxL, train=False):
        previous = jnp.pad(ids_BxL, ((0, 0), (1, 0)))[:, :-1]
        return 50.0 * jax.nn.one_hot((previous + ids_BxL) % 10, 10)


@pytest.mark.parametrize("prompt", [[3], [1, 2], [4, 0, 7, 7, 1, 2, 9]])
def test_generate_feeds_back_each_token_and_slides_its_window(prompt):
    from train.sampling import generate

    context, length = 5, 12  # the prompt is longer than the context in one case; so is the output
    (out,) = generate(NextIsSumOfLastTwo(), [np.array(prompt, np.int32)], length, context,
                      temperature=1.0, key=jax.random.PRNGKey(0))
    expected = list(prompt)
    for _ in range(length):
        window = expected[-context:]
        expected.append((window[-1] + (window[-2] if len(window) > 1 else 0)) % 10)
    assert out == expected[len(prompt):]


def test_bad_fields_name_the_fix():
    with pytest.raises(ValueError, match="model 'resnet50' has no field.* depth; its fields: stem"):
        nets.build("resnet50", input_shape=(32, 32, 3), num_classes=10, depth=18)
    with pytest.raises(ValueError, match="unknown ResNet stem 'tiny'; known: imagenet, cifar"):
        nets.build("resnet18", input_shape=(32, 32, 3), num_classes=10, stem="tiny")
    with pytest.raises(ValueError, match="unknown pool 'min'; known: max, avg"):
        nets.build("cnn", input_shape=(8, 8, 1), num_classes=10, pool="min")
    with pytest.raises(ValueError, match="unknown dtype 'float16'; known: float32, bfloat16"):
        nets.build("gpt", input_shape=(8,), num_classes=5, dtype="float16", width=8, heads=2)
    with pytest.raises(ValueError, match="width=30 does not divide into model.heads=4"):
        nets.build("gpt", input_shape=(8,), num_classes=5, width=30, heads=4)
    with pytest.raises(ValueError, match="a GPT takes .length,. token ids"):
        nets.build("gpt", input_shape=(28, 28, 1), num_classes=10, width=8, heads=2)
    with pytest.raises(ValueError, match="16 tokens exceed model.context=8; set model.context >= 16"):
        nets.build("gpt", input_shape=(16,), num_classes=5, width=8, heads=2, context=8)
    model = nets.build("gpt", input_shape=(8,), num_classes=5, width=8, heads=2, layers=1)
    with pytest.raises(ValueError, match="9 tokens exceed the model's context of 8"):
        model(jnp.zeros((1, 9), jnp.int32))


def test_the_cnn_pools_each_2x2_window_by_its_max_or_its_mean():
    from nets.cnn import POOLS
    x = jnp.arange(20.0).reshape(1, 4, 5, 1)  # the odd last column is cropped
    np.testing.assert_array_equal(POOLS["max"](x)[0, :, :, 0], [[6.0, 8.0], [16.0, 18.0]])
    np.testing.assert_array_equal(POOLS["avg"](x)[0, :, :, 0], [[3.0, 5.0], [13.0, 15.0]])
    model = nets.build("cnn", input_shape=(8, 8, 1), num_classes=10, channels=(4,), pool="avg")
    assert model(jnp.ones((2, 8, 8, 1))).shape == (2, 10)


# --- learning real text: the loss falls below what character frequencies alone give


def unigram_entropy(ids: np.ndarray) -> float:
    p = np.bincount(ids) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# One device, as a user's CPU run: these test what a net learns, not how it is split (the
# strategies are compared in tests/test_parallel.py); on the 8 fake devices of 2 cores the
# same tests took 1.4x as long.
@pytest.mark.parametrize("name, fields, learning_rate", [
    ("gpt", dict(layers=2, heads=2, width=64, dropout=0.0), 3e-3),
    ("lstm", dict(hidden=128, embed=32), 1e-2),
    ("gru", dict(hidden=128, embed=32), 1e-2),
    ("rnn", dict(hidden=128, embed=32), 3e-3),
])
def test_language_models_learn_tiny_shakespeare(prepared, name, fields, learning_rate, capsys):
    config = tiny_config("shakespeare_gpt.py", **{"dataset.data_dir": prepared, "steps": 80,
                                                  "parallel.mesh": "data=1",
                                                  "optimizer.learning_rate": learning_rate})
    text = data.load("tiny_shakespeare", data_dir=prepared, context=config.dataset.context)
    model = nets.build(name, input_shape=text.input_shape, num_classes=text.num_classes,
                       **fields)
    trainer = Trainer(config, model, text)
    validation = functools.partial(text.eval_batches, "validation", 512)
    before = trainer.evaluate(trainer.initial_state, validation())["loss"]
    state = trainer.initial_state
    for batch in text.train_batches(config.dataset.batch_size, seed=0, epoch=0):
        state, _ = trainer.train_step(state, trainer.put(batch))
        if int(state.step) == config.steps:
            break
    after = trainer.evaluate(state, validation())["loss"]
    floor = unigram_entropy(text.splits["train"])
    with capsys.disabled():
        print(f"\n{name} on tiny_shakespeare, {config.steps} steps: validation loss "
              f"{before:.3f} -> {after:.3f} nats/char (character frequencies alone: {floor:.3f})")
    assert before == pytest.approx(math.log(text.num_classes), abs=0.3)  # uniform at the start
    assert after < floor - 0.1


# --- the zoo's configs and commands, end to end


# CIFAR's 32 mock training images lose a tenth to the validation split: one batch of 16 is left
# ResNet-50 on one device, as its config trains on a user's: the strategies are compared on
# smaller nets (tests/test_parallel.py).
@pytest.mark.parametrize("name, steps, mesh", [("cifar10_resnet.py", 1, "data=-1"),
                                               ("imagenet_resnet50.py", 2, "data=1")])
def test_image_configs_train_and_evaluate_on_mock_data(name, steps, mesh, tmp_path):
    from experiments import run

    config = tiny_config(name, **{"parallel.mesh": mesh})
    with tfds.testing.mock_data(num_examples=32):
        summary = run.train_and_evaluate(config, str(tmp_path))
    assert summary["latest_step"] == steps
    assert summary["test"]["examples"] == 32 and math.isfinite(summary["test"]["loss"])
    assert os.path.exists(summary["curves"])


def test_the_imagenet_recipe_is_the_standard_one():
    from experiments.config import load_config

    c = load_config(config_path("imagenet_resnet50.py"))
    assert c.model.name == "resnet50" and c.model.dtype == "bfloat16" and c.epochs == 90
    assert c.optimizer.name == "sgd" and c.optimizer.momentum == 0.9
    assert c.optimizer.learning_rate == 0.1 and c.optimizer.reference_batch_size == 256
    for batch_size in (256, 1024):  # lr 0.1 x batch/256, whatever batch the command line sets
        schedule = learning_rate_schedule(c.optimizer, total_steps=1000, steps_per_epoch=10,
                                          batch_size=batch_size)
        assert schedule(50) == pytest.approx(0.1 * batch_size / 256)  # after 5 warmup epochs
        assert schedule(25) == pytest.approx(0.05 * batch_size / 256)  # halfway through it
    assert c.optimizer.warmup_epochs == 5 and c.optimizer.schedule == "warmup_cosine"
    assert c.optimizer.weight_decay == 1e-4 and c.loss.label_smoothing == 0.1
    # weight decay reaches kernels only: every 1-d parameter (biases, norm scales) is exempt
    model = nnx.eval_shape(lambda: nets.build("resnet50", input_shape=(224, 224, 3),
                                              num_classes=1000))
    mask = decay_mask(nnx.state(model, nnx.Param))
    decayed = {jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(mask) if v}
    assert decayed and all("kernel" in k for k in decayed)


def test_models_lists_every_net_with_its_parameter_count(capsys):
    from experiments.cli import main

    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    rows = {line.split()[0]: line for line in listed.splitlines() if line.strip()}
    for name, count in {**REFERENCE_COUNTS, "gpt": GPT2_SMALL}.items():
        assert f" {count:,} " in rows[name]
    assert set(nets.NETS) <= set(rows)
    # each net's fields with their defaults, as a config sets them
    assert "  mlp: depth=2, width=256, activation=relu, dropout=0.0, init=lecun" in listed


def test_sample_generates_from_a_trained_language_model(prepared, tmp_path, capsys):
    workdir, text = str(tmp_path / "gpt"), tmp_path / "text"
    shutil.copytree(os.path.join(prepared, "tiny_shakespeare"), text / "tiny_shakespeare")
    trained = descent("train", "--config", config_path("shakespeare_gpt.py") + ":tiny",
                      "--workdir", workdir, f"--config.dataset.data_dir={text}",
                      "--config.steps=30")
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.strip().splitlines()[-1].endswith(  # counted in characters
        f"characters), loss {trained.stdout.split(' loss ')[-1].strip()}")
    vocab = set(data.load("tiny_shakespeare", data_dir=prepared).vocab)
    shutil.rmtree(text)  # the vocabulary travels with the checkpoint: sampling needs no text

    result = descent("sample", "--workdir", workdir, "--prompt", "ROMEO:", "--length", "80")
    assert result.returncode == 0, result.stderr
    text = result.stdout[:-1]  # print's newline
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 80 and set(text) <= vocab

    from experiments import run
    greedy = run.sample(workdir, "ROMEO:", 40, temperature=0.0)
    assert greedy == run.sample(workdir, "ROMEO:", 40, temperature=0.0, seed=5)  # no draw
    assert run.sample(workdir, "ROMEO:", 40, seed=1) != run.sample(workdir, "ROMEO:", 40, seed=2)
    # the cache changes no token: greedy texts of prompts of several lengths, drawn together,
    # past the 32-character context (where the window slides), equal the whole window's
    prompts = ["ROMEO:", "A", "JULIET: O Romeo, Romeo, wherefore art thou Romeo?"]
    cached = run.sample(workdir, prompts, 45, temperature=0.0)
    assert cached == run.sample(workdir, prompts, 45, temperature=0.0, cache=False)
    # on one device as on the 8 the tests see, the 3 prompts split over them (5 rows added)
    assert cached == run.sample(workdir, prompts, 45, temperature=0.0, mesh="data=1")
    assert cached[0] == run.sample(workdir, "ROMEO:", 45, temperature=0.0)  # alone or together
    assert run.sample(workdir, prompts, 45, top_k=1, seed=3) == cached  # one left to draw
    assert run.sample(workdir, prompts, 45, top_p=1e-6, seed=3) == cached
    said = cached[0][len("ROMEO:"):]
    stop = said[10:12]
    assert run.sample(workdir, "ROMEO:", 45, temperature=0.0, stop=stop) == (
        "ROMEO:" + said[:said.index(stop) + 2])

    code, err = error_of(capsys, "sample", "--workdir", workdir, "--prompt", "ROMEO: ☃",
                         "--length", "5")
    assert code == 2 and "not in the 65-character vocabulary of tiny_shakespeare: '☃'" in err


def test_sample_refuses_a_classifier(tmp_path, capsys):
    from experiments.cli import main

    workdir = str(tmp_path / "mlp")
    assert main(["train", "--config", config_path("digits_mlp.py") + ":tiny",
                 "--workdir", workdir]) == 0
    capsys.readouterr()
    code, err = error_of(capsys, "sample", "--workdir", workdir, "--prompt", "ROMEO:")
    assert code == 2
    assert "trained on digits, which is not text; sample from a language model" in err


# One device, for the reason above the language models'.
@pytest.mark.parametrize("name, fields", [
    ("lstm", dict(hidden=64)),
    ("gru", dict(hidden=64)),
    ("bert", dict(layers=2, heads=4, width=64, dropout=0.0)),
])
def test_sequence_classifiers_read_digits_row_by_row(name, fields):
    """An 8x8 digit is a sequence of 8 rows of 8 pixels: a recurrent net classifies it from its
    last state, the encoder from its [CLS] position."""
    import ml_collections

    from experiments import run

    config = tiny_config("digits_mlp.py", **{"epochs": 8, "optimizer.learning_rate": 3e-3,
                                             "parallel.mesh": "data=1"})
    config.model = ml_collections.ConfigDict({"name": name, **fields})
    model, dataset = run.build(config)
    trainer = Trainer(config, model, dataset)
    state = trainer.initial_state
    for epoch in range(config.epochs):
        for batch in dataset.train_batches(config.dataset.batch_size, seed=0, epoch=epoch):
            state, metrics = trainer.train_step(state, trainer.put(batch))
            jax.block_until_ready(metrics)  # as train.loop does: never hundreds of steps queued
    result = trainer.evaluate(state, dataset.eval_batches("test", 360))
    assert result["accuracy"] > 0.85, result  # chance is 0.1


def test_the_lstm_config_trains_end_to_end_on_real_text(prepared, tmp_path):
    from experiments import run

    config = tiny_config("shakespeare_lstm.py", **{"dataset.data_dir": prepared})
    summary = run.train_and_evaluate(config, str(tmp_path))
    assert summary["latest_step"] == config.steps
    assert summary["test"]["split"] == "validation"
    text = data.load("tiny_shakespeare", data_dir=prepared)
    assert summary["test"]["loss"] < unigram_entropy(text.splits["train"])
