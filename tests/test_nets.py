import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nets
from nets.cnn import max_pool_2x2


@pytest.mark.parametrize("activation", sorted(nets.ACTIVATIONS))
def test_mlp_shapes_for_every_activation(activation):
    model = nets.build("mlp", input_shape=(8, 8, 1), num_classes=10, depth=4, width=16,
                       activation=activation)
    assert model(jnp.ones((3, 8, 8, 1))).shape == (3, 10)
    assert len(model.hidden) == 4


def test_mlp_parameter_count_is_weights_plus_biases():
    model = nets.build("mlp", input_shape=(8, 8, 1), num_classes=10, depth=2, width=32)
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)


def test_cnn_shapes_with_and_without_batch_norm():
    for batch_norm in (False, True):
        model = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, channels=(4, 8),
                           dense=16, batch_norm=batch_norm)
        # traced, not run: run op by op, each op compiles on its own (~10 s for both)
        logits = nnx.eval_shape(lambda m: m(jnp.ones((2, 28, 28, 1)), train=True), model)
        assert logits.shape == (2, 10)
    assert len(nnx.state(model, nnx.BatchStat)) > 0


def test_max_pool_takes_the_max_of_each_2x2_window():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(max_pool_2x2(x)[0, :, :, 0], [[5.0, 7.0], [13.0, 15.0]])


def test_dropout_only_in_training_and_keyed():
    model = nets.build("mlp", input_shape=(8,), num_classes=4, width=64, dropout=0.5)
    x = jnp.ones((2, 8))
    np.testing.assert_array_equal(model(x), model(x, train=False))
    a = model(x, train=True, rngs=jax.random.PRNGKey(1))
    b = model(x, train=True, rngs=jax.random.PRNGKey(1))
    c = model(x, train=True, rngs=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, model(x))


def test_unknown_names_and_fields_list_what_is_known():
    with pytest.raises(ValueError, match="unknown model 'resnet9'; known: bert, cnn, gpt, gru, lstm, mlp, resnet101"):
        nets.build("resnet9", input_shape=(8,), num_classes=2)
    with pytest.raises(ValueError, match="unknown activation 'swish'; known: gelu, relu, sigmoid, tanh"):
        nets.build("mlp", input_shape=(8,), num_classes=2, activation="swish")
    with pytest.raises(ValueError, match="no field.* heads; its fields: depth, width"):
        nets.build("mlp", input_shape=(8,), num_classes=2, heads=4)
    with pytest.raises(ValueError, match="fewer model.channels"):
        nets.build("cnn", input_shape=(8, 8, 1), num_classes=2, channels=(4, 4, 4, 4))


@pytest.mark.parametrize("init,variance", [
    ("lecun", lambda fan_in, fan_out: 1 / fan_in),
    ("glorot", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),
    ("he", lambda fan_in, fan_out: 2 / fan_in),
])
def test_init_sets_the_variance_of_every_weight_matrix(init, variance):
    model = nets.build("mlp", input_shape=(256,), num_classes=64, depth=2, width=512, init=init)
    for layer in [*model.hidden, model.head]:
        w = np.asarray(layer.kernel[...])
        assert abs(w.var() / variance(*w.shape) - 1) < 0.05, (init, w.shape, w.var())
        assert not np.asarray(layer.bias[...]).any()


def test_cnn_init_and_unknown_init():
    he = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, channels=(64, 64),
                    init="he")
    fan_in = 3 * 3 * 64
    assert abs(np.asarray(he.convs[1].kernel[...]).var() * fan_in / 2 - 1) < 0.05
    with pytest.raises(ValueError, match="unknown init 'xavier'; known: lecun, glorot, he"):
        nets.build("mlp", input_shape=(8,), num_classes=2, init="xavier")


def test_uniform_biases_are_drawn_as_pytorch_draws_them_and_zeros_stay_the_default():
    model = nets.build("mlp", input_shape=(1,), num_classes=1, depth=2, width=4096,
                       bias_init="uniform")
    for layer, fan_in in zip([*model.hidden, model.head], (1, 4096, 4096)):
        b = np.asarray(layer.bias[...])
        bound = 1 / np.sqrt(fan_in)  # torch.nn.Linear: U(-1/sqrt(in_features), ...)
        assert np.abs(b).max() <= bound
        if b.size > 1:  # spread over the whole range: the variance of U(-a, a) is a^2 / 3
            assert abs(b.var() / (bound ** 2 / 3) - 1) < 0.1, (fan_in, b.var())
    cnn = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, channels=(64, 64),
                     bias_init="uniform")
    b = np.asarray(cnn.convs[1].bias[...])
    assert np.abs(b).max() <= 1 / np.sqrt(3 * 3 * 64) and np.unique(b).size == 64
    assert nets.fields("mlp")["bias_init"] == nets.fields("cnn")["bias_init"] == "zeros"
    with pytest.raises(ValueError, match="unknown bias_init 'normal'; known: zeros, uniform"):
        nets.build("mlp", input_shape=(8,), num_classes=2, bias_init="normal")


@pytest.mark.parametrize("bias_init", ["zeros", "uniform"])
def test_where_a_one_input_relu_layer_bends_is_set_by_its_biases(bias_init):
    """With zero biases every unit of a one-hidden-layer ReLU net on one input bends at x = 0,
    so the net is a straight line on each side of 0, however wide; spread biases put the
    bends across [-1, 1]."""
    model = nets.build("mlp", input_shape=(1,), num_classes=1, depth=1, width=256,
                       bias_init=bias_init, seed=3)
    x = np.linspace(0.01, 1.0, 100, dtype=np.float32)[:, None]
    slopes = np.diff(np.asarray(model(x))[:, 0]) / np.diff(x[:, 0])
    straight = np.ptp(slopes) < 1e-3 * np.abs(slopes).max()
    assert straight == (bias_init == "zeros"), np.ptp(slopes)


def test_cnn_blocks_are_the_feature_maps_the_logits_are_computed_from():
    model = nets.build("cnn", input_shape=(28, 28, 1), num_classes=10, channels=(4, 8), dense=0)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
    blocks = model.blocks(x)
    assert [b.shape for b in blocks] == [(2, 14, 14, 4), (2, 7, 7, 8)]
    assert model.dense is None  # dense=0: the head reads the last block directly
    logits = model.head(blocks[-1].reshape(2, -1))
    np.testing.assert_allclose(model(x), logits, rtol=1e-6)


def test_a_depth_0_mlp_is_a_linear_model():
    model = nets.build("mlp", input_shape=(3,), num_classes=1, depth=0)
    assert len(model.hidden) == 0
    x = jnp.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(model(x), x @ model.head.kernel[...] + model.head.bias[...])
    with pytest.raises(ValueError, match="model.depth >= 0"):
        nets.build("mlp", input_shape=(3,), num_classes=1, depth=-1)


def test_float64_computes_in_float64_only_in_64_bit_mode():
    with pytest.raises(ValueError, match="needs JAX's 64-bit mode"):
        nets.build("mlp", input_shape=(4,), num_classes=2, dtype="float64")
    with jax.enable_x64(True):
        model = nets.build("mlp", input_shape=(4,), num_classes=2, dtype="float64")
        assert model(jnp.ones((1, 4), jnp.float64)).dtype == jnp.float64


def test_forget_bias_shifts_only_the_lstm_forget_gate():
    make = lambda bias: nets.build("lstm", input_shape=(5, 3), num_classes=4, hidden=6, layers=1,
                                   forget_bias=bias)
    plain, holding = make(0.0).layers[0].input.bias[...], make(2.5).layers[0].input.bias[...]
    np.testing.assert_allclose(holding - plain, np.r_[np.zeros(6), np.full(6, 2.5),
                                                      np.zeros(12)], atol=1e-6)
    with pytest.raises(ValueError, match="forget_bias applies to the lstm cell, not to 'gru'"):
        nets.build("gru", input_shape=(5, 3), num_classes=4, forget_bias=1.0)


def test_chrono_spreads_the_lstm_memory_times_over_1_to_t_max_minus_1_steps():
    """Tallec & Ollivier's chrono initialisation: forget-gate bias log(u), u ~ U[1, T_max - 1],
    so each unit's time constant 1 / (1 - f), f = sigmoid(b), lies in [2, T_max]; input-gate
    bias -b; the recurrent biases of both gates 0; the cell and output gates keep PyTorch's
    draw."""
    t_max, hidden = 50, 512
    layer = nets.build("lstm", input_shape=(5, 3), num_classes=4, hidden=hidden, layers=1,
                       chrono=t_max).layers[0]
    plain = nets.build("lstm", input_shape=(5, 3), num_classes=4, hidden=hidden,
                       layers=1).layers[0]
    b = np.asarray(layer.input.bias[...], np.float64)
    entry, forget = b[:hidden], b[hidden:2 * hidden]
    time_constant = 1 / (1 - 1 / (1 + np.exp(-forget)))
    assert 2 - 1e-4 <= time_constant.min() and time_constant.max() <= t_max + 1e-4
    assert abs(time_constant.mean() - 26) < 2  # 1 + U[1, 49]: mean 26; 512 draws: sd ~0.6
    np.testing.assert_allclose(entry, -forget)
    recurrent = np.asarray(layer.recurrent.bias[...])
    assert not recurrent[:2 * hidden].any()
    np.testing.assert_array_equal(recurrent[2 * hidden:],
                                  np.asarray(plain.recurrent.bias[...])[2 * hidden:])
    with pytest.raises(ValueError, match="chrono=1 spans no steps"):
        nets.build("lstm", input_shape=(5, 3), num_classes=4, chrono=1)
    with pytest.raises(ValueError, match="leave model.forget_bias at 0"):
        nets.build("lstm", input_shape=(5, 3), num_classes=4, chrono=t_max, forget_bias=1.0)
    with pytest.raises(ValueError, match="chrono applies to the lstm cell, not to 'rnn'"):
        nets.build("rnn", input_shape=(5, 3), num_classes=4, chrono=t_max)


@pytest.mark.parametrize("name, inputs", [("gpt", "ids"), ("bert", "rows")])
@pytest.mark.parametrize("remat", ["block", "dots_with_no_batch_dims_saveable"])
def test_remat_recomputes_the_blocks_to_the_same_gradients(name, inputs, remat):
    """Dropout on, in training mode: a recomputed block draws the very masks it drew first."""
    rng = np.random.default_rng(0)
    if inputs == "ids":
        shape, x = (16,), jnp.asarray(rng.integers(0, 30, (4, 16)), jnp.int32)
    else:
        shape, x = (8, 8, 1), jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    grads = []
    for setting in ("none", remat):
        model = nets.build(name, input_shape=shape, num_classes=30, layers=3, heads=2, width=32,
                           dropout=0.1, remat=setting, seed=1)
        grads.append(jax.tree.leaves(nnx.jit(nnx.grad(lambda m: m(
            x, train=True, rngs=jax.random.PRNGKey(2)).astype(jnp.float32).std()))(model)))
    assert len(grads[0]) == len(grads[1]) > 0
    for plain, recomputed in zip(*grads):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, inputs, remat", [("gpt", "ids", "none"),
                                                 ("bert", "rows", "block")])
def test_scanned_layers_compute_what_the_loop_computes(name, inputs, remat):
    """model.scan_layers stacks the same blocks (the same initial numbers) and runs them as one
    scan: the logits and every gradient are the loop's, its layer i at index i of the stack.
    Dropout off: the scan draws each layer's masks from a key of its own."""
    rng = np.random.default_rng(0)
    if inputs == "ids":
        shape, x = (16,), jnp.asarray(rng.integers(0, 30, (4, 16)), jnp.int32)
    else:
        shape, x = (8, 8, 1), jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    made = {scan: nets.build(name, input_shape=shape, num_classes=30, layers=3, heads=2,
                             width=32, dropout=0.0, remat=remat if scan else "none",
                             scan_layers=scan, seed=1) for scan in (False, True)}
    loop, scanned = (nnx.state(made[s], nnx.Param) for s in (False, True))
    assert scanned["blocks"]["up"]["kernel"][...].shape == (3, 32, 128)
    np.testing.assert_array_equal(scanned["blocks"]["up"]["kernel"][...][2],
                                  loop["blocks"][2]["up"]["kernel"][...])
    np.testing.assert_allclose(made[True](x), made[False](x), rtol=1e-6, atol=1e-6)
    grads = {scan: nnx.jit(nnx.grad(lambda m: m(x, train=True, rngs=jax.random.key(2)).std()))(
        model) for scan, model in made.items()}
    for i in range(3):
        per_layer = jax.tree.map(lambda g: g[i], grads[True]["blocks"])
        for a, b in zip(jax.tree.leaves(per_layer), jax.tree.leaves(grads[False]["blocks"][i])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for part in ("embed", "norm" if name == "gpt" else "head"):
        for a, b in zip(jax.tree.leaves(grads[True][part]), jax.tree.leaves(grads[False][part])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_kv_cache_reads_scanned_layers():
    """Sampling from a GPT with stacked blocks: the cache has one pair of stacked keys and
    values, and a prefill then a step give the logits of the whole sequence at once."""
    model = nets.build("gpt", input_shape=(12,), num_classes=30, layers=3, heads=2, width=16,
                       dropout=0.0, scan_layers=True, seed=4)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 30, (2, 12)), jnp.int32)
    cache = model.empty_cache(2)
    assert cache[0].shape == (3, 2, 12, 2, 8)
    start = jnp.zeros(2, jnp.int32)
    first, cache = model.extend(ids[:, :7], start, cache)
    last, _ = model.extend(ids[:, 7:8], start + 7, cache)
    whole = model(ids[:, :8])
    np.testing.assert_allclose(first, whole[:, :7], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last[:, 0], whole[:, 7], rtol=1e-5, atol=1e-5)


def test_an_unknown_remat_lists_the_policies():
    with pytest.raises(ValueError, match=r"unknown model.remat 'blocks'; known: none, block, "
                                         r"checkpoint_dots, .*dots_with_no_batch_dims_saveable"):
        nets.build("gpt", input_shape=(8,), num_classes=5, layers=1, heads=1, width=8,
                   remat="blocks")
