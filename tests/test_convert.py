"""nets/convert.py: weights from Hugging Face GPT-2 and torchvision ResNets, built here with
random weights (nothing downloaded), give descent's nets PyTorch's logits, and go back."""
import json

import numpy as np
import pytest
import safetensors.numpy
import torch
import torchvision
import transformers
from flax import nnx

import nets
from nets import convert

# float32 on both sides, summed in different orders (XLA's and PyTorch's kernels): GPT-2's
# logits (about 1 in size) agree to about 1e-6; 1e-4 leaves room for other CPUs, while a
# misplaced array (a transpose, a swapped q and k) moves them by 0.1 or more. A ResNet's
# rounding grows with the size of its numbers, and random weights make its logits large
# (ResNet-50's reach a few hundred, differing by 2e-4): there the 1e-4 is relative to the largest.
ATOL = 1e-4

GPT2 = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=97,
            bos_token_id=0, eos_token_id=0)  # GPT-2's own ids (50256) are outside 97


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, norms' included: PyTorch starts their scales and a batch
    norm's running variance at 1, and every bias and running mean at 0, where a wrong map
    would go unnoticed. Eval mode, so batch norms divide by the running statistics."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.normal_(0, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, (transformers.pytorch_utils.Conv1D, torch.nn.Embedding)):
                m.weight.normal_(0, 0.1)  # HF's 0.02 leaves attention almost uniform
            if isinstance(m, (transformers.pytorch_utils.Conv1D, torch.nn.Linear)) and (
                    m.bias is not None):
                m.bias.normal_(0, 0.1)
    return module.eval()


def build(name: str, params: dict, batch_stats: dict | None = None, **fields) -> nnx.Module:
    """descent's net `name` holding the converted arrays. Built abstract (shapes only, so no
    time goes into initialising what is replaced), then every leaf is replaced: the converted
    dicts must cover the whole state."""
    model = nnx.eval_shape(lambda: nets.build(name, **fields))
    for kind, pure in ((nnx.Param, params), (nnx.BatchStat, batch_stats or {})):
        state = nnx.state(model, kind)
        assert_same_keys(nnx.to_pure_dict(state), pure)
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)
    return model


@nnx.jit
def descent_logits(model, x):  # compiled once: op by op, a ResNet-50 takes far longer
    return model(x)


def torch_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return getattr(out, "logits", out).numpy()


def assert_same_keys(a: dict, b: dict):
    flat_a, flat_b = nnx.traversals.flatten_mapping(a), nnx.traversals.flatten_mapping(b)
    assert sorted(flat_a, key=str) == sorted(flat_b, key=str)
    return flat_a, flat_b


def assert_same_arrays(a: dict, b: dict):
    """Two nested dicts with the same keys and bit-identical arrays at every leaf."""
    flat_a, flat_b = assert_same_keys(a, b)
    for key, x in flat_a.items():
        assert x.dtype == flat_b[key].dtype and np.array_equal(x, flat_b[key]), key


def string_keys(tree):
    return {str(k): string_keys(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A small GPT2LMHeadModel with random weights and its save_pretrained folder."""
    model = randomize(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)), seed=0)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def read_gpt2(folder):
    config = json.loads((folder / "config.json").read_text())
    return config, safetensors.numpy.load_file(folder / "model.safetensors")


IDS = np.random.default_rng(0).integers(0, GPT2["vocab_size"], (2, 20))  # 20 < n_positions


def test_gpt2_from_transformers_gives_its_logits(gpt2):
    hf, folder = gpt2
    config, tensors = read_gpt2(folder)
    assert "lm_head.weight" not in tensors  # tied: save_pretrained writes wte only
    assert "transformer.h.0.attn.c_attn.weight" in tensors
    fields = convert.gpt2_fields(config)
    assert fields == dict(layers=2, heads=4, width=64, context=32, dropout=0.1, num_classes=97)
    model = build("gpt", convert.gpt2_params(tensors, fields), input_shape=IDS.shape[1:],
                  **fields)
    ours, theirs = np.asarray(descent_logits(model, IDS)), torch_logits(hf, IDS)
    print("GPT-2 max abs logit difference", np.abs(ours - theirs).max())
    exported = convert.gpt2_tensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert all(np.array_equal(exported[k], tensors[k]) for k in tensors)
    assert np.abs(theirs).max() > 0.5  # logits far from 0, so ATOL is a real test
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)

    # reorder_and_upcast_attn only changes float16 rounding: in float32, the same logits
    # (transformers reads it in its eager attention only)
    reordered = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **GPT2, reorder_and_upcast_attn=True, attn_implementation="eager")).eval()
    reordered.load_state_dict(hf.state_dict())
    assert convert.gpt2_fields({**config, "reorder_and_upcast_attn": True}) == fields
    np.testing.assert_allclose(ours, torch_logits(reordered, IDS), atol=ATOL, rtol=0)


def test_gpt2_export_loads_in_transformers_and_round_trips(gpt2, tmp_path):
    hf, folder = gpt2
    config, tensors = read_gpt2(folder)
    fields = convert.gpt2_fields(config)
    params = convert.gpt2_params(tensors, fields)
    exported = convert.gpt2_tensors(params)
    assert exported.keys() == tensors.keys()
    assert all(np.array_equal(exported[k], tensors[k]) for k in tensors)
    assert_same_arrays(convert.gpt2_params(exported, fields), params)

    safetensors.numpy.save_file(exported, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(convert.gpt2_config(fields)))
    back, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    np.testing.assert_array_equal(torch_logits(back.eval(), IDS), torch_logits(hf, IDS))
    assert convert.gpt2_fields(json.loads((tmp_path / "config.json").read_text())) == fields


def test_gpt2_names_without_prefix_buffers_and_tied_head(gpt2):
    config, tensors = read_gpt2(gpt2[1])
    fields = convert.gpt2_fields(config)
    params = convert.gpt2_params(tensors, fields)
    # as GPT2Model's hub files: no prefix, the causal mask saved as h.N.attn.bias
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    bare["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    bare["lm_head.weight"] = bare["wte.weight"].copy()  # tied: the same numbers
    assert_same_arrays(convert.gpt2_params(bare, fields), params)

    bare["lm_head.weight"] = bare["wte.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight; descent's GPT "
                                         "ties"):
        convert.gpt2_params(bare, fields)


def test_gpt2_refuses_missing_misshapen_and_unexpected_tensors(gpt2):
    config, tensors = read_gpt2(gpt2[1])
    fields = convert.gpt2_fields(config)
    missing = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(ValueError, match=r"^missing tensor h.1.mlp.c_fc.bias \(expected shape "
                                         r"\(256,\)\)$"):
        convert.gpt2_params(missing, fields)
    misshapen = {**tensors, "transformer.h.0.attn.c_attn.weight": np.zeros((192, 64))}
    with pytest.raises(ValueError, match=r"^tensor transformer.h.0.attn.c_attn.weight has shape "
                                         r"\(192, 64\); descent's GPT expects \(64, 192\)$"):
        convert.gpt2_params(misshapen, fields)
    extra = {**tensors, "transformer.h.0.attn.q_attn.weight": np.zeros((64, 64))}
    with pytest.raises(ValueError, match="unexpected tensors, which descent's GPT has no place "
                                         "for: transformer.h.0.attn.q_attn.weight$"):
        convert.gpt2_params(extra, fields)


@pytest.mark.parametrize("key,value,supported", [
    ("activation_function", "gelu", "GELU's tanh approximation"),
    ("layer_norm_epsilon", 1e-6, "1e-05 only"),
    ("n_inner", 128, "None or 4 \\* n_embd = 256"),
    ("scale_attn_by_inverse_layer_idx", True, "false only"),
    ("scale_attn_weights", False, "true only"),
    ("tie_word_embeddings", False, "true only"),
    ("model_type", "gpt_neo", "'gpt2' only"),
])
def test_gpt2_config_that_computes_otherwise_is_refused(gpt2, key, value, supported):
    config, _ = read_gpt2(gpt2[1])
    with pytest.raises(ValueError, match=f"^config.json has {key}={value!r}; descent's GPT "
                                         f"supports {supported}"):
        convert.gpt2_fields({**config, key: value})


def test_gpt2_fields_of_an_old_config_take_transformers_defaults():
    # the hub's gpt2 config.json predates n_inner, scale_attn_weights and others
    old = {"activation_function": "gelu_new", "model_type": "gpt2", "n_ctx": 1024,
           "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
           "layer_norm_epsilon": 1e-05, "resid_pdrop": 0.1, "vocab_size": 50257}
    fields = convert.gpt2_fields(old)
    assert fields == {**{k: v for k, v in nets.fields("gpt").items() if k in fields},
                      "context": 1024, "num_classes": 50257}
    assert transformers.GPT2Config(**convert.gpt2_config(fields)).eos_token_id == 50256


def torchvision_resnet(depth: int, seed: int = 0) -> torch.nn.Module:
    return randomize(getattr(torchvision.models, f"resnet{depth}")(weights=None,
                                                                    num_classes=10), seed)


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


IMAGE = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)  # NCHW


@pytest.fixture(scope="module", params=[18, 50])
def resnet(request):
    """(depth, torchvision's ResNet-depth with random weights, its state dict)."""
    model = torchvision_resnet(request.param)
    return request.param, model, state_dict(model)


def test_resnet_from_torchvision_gives_its_logits(resnet):
    depth, theirs, tensors = resnet
    assert convert.resnet_depth(tensors) == depth and convert.resnet_classes(tensors) == 10
    params, stats = convert.resnet_params(tensors, depth)
    model = build(f"resnet{depth}", params, stats, input_shape=(64, 64, 3), num_classes=10)
    ours = np.asarray(descent_logits(model, IMAGE.transpose(0, 2, 3, 1)))  # NHWC
    expected = torch_logits(theirs, IMAGE)
    exported = convert.resnet_tensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                                      nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    assert all(np.array_equal(exported[k], tensors[k]) for k in tensors
               if not k.endswith("num_batches_tracked"))
    largest = np.abs(expected).max()
    print(f"ResNet-{depth} max abs logit difference", np.abs(ours - expected).max(),
          "largest logit", largest)
    assert largest > 0.5
    np.testing.assert_allclose(ours, expected, atol=ATOL * largest, rtol=0)


def test_resnet_export_loads_strictly_in_torchvision_and_round_trips(resnet):
    depth, theirs, tensors = resnet
    params, stats = convert.resnet_params(tensors, depth)
    exported = convert.resnet_tensors(params, stats)
    assert exported.keys() == tensors.keys()
    assert exported["bn1.num_batches_tracked"].dtype == np.int64
    assert all(np.array_equal(exported[k], tensors[k]) for k in tensors
               if not k.endswith("num_batches_tracked"))
    # a pure dict restored from a checkpoint may name list items "0", "1", ...
    assert_same_arrays(convert.resnet_tensors(string_keys(params), string_keys(stats)), exported)
    back_params, back_stats = convert.resnet_params(exported, depth)
    assert_same_arrays(back_params, params)
    assert_same_arrays(back_stats, stats)

    fresh = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    np.testing.assert_array_equal(torch_logits(fresh.eval(), IMAGE), torch_logits(theirs, IMAGE))


def test_resnet_refuses_missing_misshapen_and_unexpected_tensors():
    tensors = state_dict(torchvision.models.resnet18(weights=None))
    missing = {k: v for k, v in tensors.items() if k != "layer3.1.bn2.running_var"}
    with pytest.raises(ValueError, match=r"^missing tensor layer3.1.bn2.running_var \(expected "
                                         r"shape \(256,\)\)$"):
        convert.resnet_params(missing, 18)
    misshapen = {**tensors, "layer2.0.conv1.weight": np.zeros((128, 64, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"^tensor layer2.0.conv1.weight has shape "
                                         r"\(128, 64, 1, 1\); descent's ResNet-18 expects "
                                         r"\(128, 64, 3, 3\)$"):
        convert.resnet_params(misshapen, 18)
    with pytest.raises(ValueError, match="descent's ResNet-18 has no place for: "
                                         "layer1.2.bn1.bias, "):
        convert.resnet_params(state_dict(torchvision.models.resnet34(weights=None)), 18)
    with pytest.raises(ValueError, match=r"^tensor layer1.0.conv1.weight has shape "
                                         r"\(64, 64, 3, 3\); descent's ResNet-50 expects "
                                         r"\(64, 64, 1, 1\)$"):
        convert.resnet_params(tensors, 50)
    with pytest.raises(ValueError, match=r"^unknown ResNet depth 20; known: 18, 34, 50, 101"):
        convert.resnet_params(tensors, 20)
    # a file saved before PyTorch counted batch-norm steps has no num_batches_tracked
    old = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    assert_same_arrays(convert.resnet_params(old, 18)[1], convert.resnet_params(tensors, 18)[1])
