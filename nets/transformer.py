"""Transformers: a decoder-only GPT language model and an encoder-only BERT-style classifier.

Both are stacks of the same block, self-attention then a GELU MLP, each added back to the
residual stream. The GPT normalises before each part (pre-LayerNorm, as GPT-2 does) and attends
causally; the encoder normalises after each part (post-LayerNorm, as BERT does) and attends both
ways. Attention goes through `jax.nn.dot_product_attention` with JAX's default implementation,
which is XLA's own on every backend (its cuDNN kernel is taken only when asked for by name).
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from nets.dtypes import compute_dtype, parameter_dtype
from nets.partitioning import constrain, named

normal = nnx.initializers.normal
zeros, ones = nnx.initializers.zeros_init(), nnx.initializers.ones_init()
default_kernel = nnx.initializers.lecun_normal()  # nnx.Linear's own


class SelfAttention(nnx.Module):
    def __init__(self, width, heads, causal, out_std, dtypes, rngs):
        if width % heads:
            raise ValueError(f"model.width={width} does not divide into model.heads={heads}")
        self.heads, self.causal = heads, causal
        # Megatron-LM's split: the heads' projections by columns, the output by rows
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=named(normal(0.02), "embed", "heads"),
                              bias_init=named(zeros, "heads"), **dtypes, rngs=rngs)
        self.out = nnx.Linear(width, width, kernel_init=named(normal(out_std), "heads", "embed"),
                              bias_init=named(zeros, "embed"), **dtypes, rngs=rngs)

    def __call__(self, x_BxLxD):
        q, k, v = self._qkv(x_BxLxD)
        y_BxLxNxH = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y_BxLxNxH.reshape(x_BxLxD.shape))

    def cached(self, x_BxTxD, cache, position_B):
        """Causal attention of T new positions, row b's at position_B[b] on, over the keys and
        values of the positions before (`cache`: (keys, values), each B x C x N x H); returns
        the output and the cache with the new positions' keys and values written in."""
        q, k, v = self._qkv(x_BxTxD)
        write = jax.vmap(lambda old, new, at: jax.lax.dynamic_update_slice_in_dim(old, new, at, 0))
        keys_BxCxNxH = write(cache[0], k.astype(cache[0].dtype), position_B)
        values_BxCxNxH = write(cache[1], v.astype(cache[1].dtype), position_B)
        queries_BxT = position_B[:, None] + jnp.arange(x_BxTxD.shape[1])
        seen_BxTxC = jnp.arange(keys_BxCxNxH.shape[1]) <= queries_BxT[:, :, None]
        y_BxTxNxH = jax.nn.dot_product_attention(q, keys_BxCxNxH, values_BxCxNxH,
                                                 mask=seen_BxTxC[:, None])
        return self.out(y_BxTxNxH.reshape(x_BxTxD.shape)), (keys_BxCxNxH, values_BxCxNxH)

    def _qkv(self, x_BxLxD):
        b, length, width = x_BxLxD.shape
        qkv_BxLx3xNxH = self.qkv(x_BxLxD).reshape(b, length, 3, self.heads, width // self.heads)
        return tuple(qkv_BxLx3xNxH[:, :, i] for i in range(3))


class Block(nnx.Module):
    """x + attention(x), then x + mlp(x), with LayerNorm before (`pre_norm`) or after each."""

    def __init__(self, width, heads, causal, pre_norm, dropout, out_std, dtypes, rngs):
        self.pre_norm = pre_norm
        self.attention = SelfAttention(width, heads, causal, out_std, dtypes, rngs)
        self.norm1 = layer_norm(width, dtypes, rngs)
        self.norm2 = layer_norm(width, dtypes, rngs)
        self.up = nnx.Linear(width, 4 * width, kernel_init=named(normal(0.02), "embed", "mlp"),
                             bias_init=named(zeros, "mlp"), **dtypes, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, kernel_init=named(normal(out_std), "mlp", "embed"),
                               bias_init=named(zeros, "embed"), **dtypes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x_BxLxD, train, rngs):
        def drop(y):
            return self.dropout(y, deterministic=not train, rngs=rngs)

        if self.pre_norm:
            x_BxLxD = x_BxLxD + drop(self.attention(self.norm1(x_BxLxD)))
            return x_BxLxD + drop(self.mlp(self.norm2(x_BxLxD)))
        x_BxLxD = self.norm1(x_BxLxD + drop(self.attention(x_BxLxD)))
        return self.norm2(x_BxLxD + drop(self.mlp(x_BxLxD)))

    def cached(self, x_BxTxD, cache, position_B):
        """A pre-norm block on T new positions with the attention cache (see `SelfAttention`),
        as in inference: no dropout."""
        y_BxTxD, cache = self.attention.cached(self.norm1(x_BxTxD), cache, position_B)
        x_BxTxD = x_BxTxD + y_BxTxD
        return x_BxTxD + self.mlp(self.norm2(x_BxTxD)), cache

    def mlp(self, y):
        return self.down(jax.nn.gelu(self.up(y)))


def layer_norm(width, dtypes, rngs):
    return nnx.LayerNorm(width, epsilon=1e-5, **dtypes, scale_init=named(ones, "embed"),
                         bias_init=named(zeros, "embed"), rngs=rngs)


def _blocks(layers, width, heads, causal, pre_norm, dropout, dtypes, rngs, scan=False):
    # GPT-2's scaling: each residual branch's output projection has std 0.02 / sqrt(2 * layers),
    # so the residual stream's variance does not grow with depth.
    out_std = 0.02 / math.sqrt(2 * layers)
    blocks = [Block(width, heads, causal, pre_norm, dropout, out_std, dtypes, rngs)
              for _ in range(layers)]
    return _stacked(blocks) if scan else nnx.List(blocks)


def _stacked(blocks: list) -> nnx.Module:
    """One block whose every array holds those of `blocks` one after another: a leading
    dimension, named `layers`, that `_run_blocks` scans over. Made from the blocks one by one,
    so its numbers are those of the same blocks unstacked."""
    graphdef, _ = nnx.split(blocks[0])
    stacked = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs),
                                               *(nnx.split(b)[1] for b in blocks)))
    for _, variable in nnx.iter_graph(stacked):
        if isinstance(variable, nnx.Variable):
            names = variable.get_metadata().get("out_sharding")
            rest = names if names is not None else (None,) * (variable.get_value().ndim - 1)
            variable.set_metadata(out_sharding=("layers", *rest))
    return stacked


def _layer_count(stacked: nnx.Module) -> int:
    return jax.tree.leaves(nnx.state(stacked))[0].shape[0]


def _dropout_rngs(rngs):
    """A stream of fresh keys, one per dropout layer, from the step's key."""
    return None if rngs is None else nnx.Rngs(dropout=rngs)


# `remat` values besides a policy of `jax.checkpoint_policies`: keep every activation of the
# blocks for the backward pass, or keep only each block's input and recompute the rest there.
REMAT = ("none", "block")


def remat_policies() -> list[str]:
    """The names `model.remat` takes: `REMAT`, then JAX's policies that take no arguments."""
    policies = jax.checkpoint_policies
    named = sorted(n for n in dir(policies) if not n.startswith("_") and n not in (
        "save_only_these_names", "save_any_names_but_these", "save_and_offload_only_these_names",
        "save_from_both_policies", "offload_dot_with_no_batch_dims",
        "save_anything_except_these_names"))  # those take arguments
    return [*REMAT, *named]


def _run_blocks(blocks, x_BxLxD, train, rngs, remat: str):
    """The blocks in turn; with `remat`, each recomputed in the backward pass (what it keeps is
    `remat`'s policy: with `block`, only its input). Between blocks the batch is split as the
    step's rules say (`nets.partitioning`). `blocks` is a list, or one stacked block
    (`_stacked`, `scan_layers`): then one `lax.scan` runs them, compiled once for every layer,
    each drawing its dropout masks from a key of its own."""
    x_BxLxD = constrain(x_BxLxD, "batch", None, "embed")
    policy = None if remat in REMAT else getattr(jax.checkpoint_policies, remat)
    if isinstance(blocks, nnx.List):
        def step(block, x_BxLxD, train, rngs):
            return block(x_BxLxD, train, rngs)

        if remat != "none":
            step = nnx.remat(step, policy=policy, static_argnums=(2,))
        for block in blocks:
            x_BxLxD = constrain(step(block, x_BxLxD, train, rngs), "batch", None, "embed")
        return x_BxLxD
    graphdef, state = nnx.split(blocks)
    keys = None if rngs is None else jax.random.split(rngs.dropout(), _layer_count(blocks))

    def layer(x_BxLxD, state_and_key):
        state, key = state_and_key
        block = nnx.merge(graphdef, state)
        y_BxLxD = block(x_BxLxD, train, None if key is None else nnx.Rngs(dropout=key))
        return constrain(y_BxLxD, "batch", None, "embed"), None

    if remat != "none":
        layer = jax.checkpoint(layer, policy=policy)
    return jax.lax.scan(layer, x_BxLxD, (state, keys))[0]


def _check_remat(remat) -> str:
    known = remat_policies()
    if remat not in known:
        raise ValueError(f"unknown model.remat {remat!r}; known: {', '.join(known)}")
    return remat


class GPT(nnx.Module):
    """A decoder-only language model over `num_classes` tokens: (B, L) ids -> (B, L, V) logits.

    Learned positions up to `context` (default: the input length), pre-LayerNorm blocks, causal
    self-attention, and the token embedding reused as the output layer (tied weights). The
    defaults are GPT-2 small: 12 layers, 12 heads, width 768. Dropout acts on the embeddings
    and on each residual branch, not on the attention probabilities (GPT-2 also drops those;
    `jax.nn.dot_product_attention`, whose fused kernels we want, has no dropout).
    `param_dtype` is the parameters' dtype (`nets.dtypes.parameter_dtype`), `dtype` the
    computation's. `remat` recomputes the blocks in the backward pass (`_run_blocks`);
    `scan_layers` stacks them into one whose arrays have a leading dimension of layers, run by
    one `lax.scan` (`_stacked`).
    """

    def __init__(self, *, input_shape, num_classes, layers=12, heads=12, width=768, context=0,
                 dropout=0.1, dtype="float32", param_dtype="float32", remat="none",
                 scan_layers=False, rngs: nnx.Rngs):
        self.remat = _check_remat(remat)
        if len(input_shape) != 1:
            raise ValueError(f"a GPT takes (length,) token ids, not inputs of shape {input_shape}; "
                             f"use a text dataset such as tiny_shakespeare")
        self.dtype = compute_dtype(dtype)
        dtypes = dict(dtype=self.dtype, param_dtype=parameter_dtype(param_dtype))
        self.context = context or input_shape[0]
        if input_shape[0] > self.context:
            raise ValueError(f"inputs of {input_shape[0]} tokens exceed model.context={context}; "
                             f"set model.context >= {input_shape[0]}, or 0 to follow the input")
        self.embed = nnx.Embed(num_classes, width,
                               embedding_init=named(normal(0.02), "vocab", "embed"),
                               **dtypes, rngs=rngs)
        self.positions = nnx.Param(named(normal(0.01), "positions", "embed")(
            rngs.params(), (self.context, width), dtypes["param_dtype"]))
        self.blocks = _blocks(layers, width, heads, True, True, dropout, dtypes, rngs,
                              scan_layers)
        self.norm = layer_norm(width, dtypes, rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, ids_BxL, *, train=False, rngs=None) -> jax.Array:
        return self.logits(self.features(ids_BxL, train=train, rngs=rngs))

    def features(self, ids_BxL, *, train=False, rngs=None) -> jax.Array:
        """The last hidden states (B, L, D), normalised: what `logits` reads, position by
        position (so a loss may make the logits of a few positions at a time)."""
        length = ids_BxL.shape[1]
        if length > self.context:
            raise ValueError(f"{length} tokens exceed the model's context of {self.context}")
        rngs = _dropout_rngs(rngs)
        x_BxLxD = self.embed(ids_BxL) + self.positions[:length].astype(self.dtype)
        x_BxLxD = self.dropout(x_BxLxD, deterministic=not train, rngs=rngs)
        x_BxLxD = _run_blocks(self.blocks, x_BxLxD, train, rngs, self.remat)
        return self.norm(x_BxLxD)

    def logits(self, h_BxLxD) -> jax.Array:
        """float32 logits over the vocabulary of hidden states from `features`."""
        return self.embed.attend(h_BxLxD).astype(jnp.float32)

    def empty_cache(self, batch: int) -> tuple:
        """Keys and values of no position yet, per block (stacked blocks: one pair, each
        with a leading dimension of layers): what `extend` starts from."""
        stacked = not isinstance(self.blocks, nnx.List)
        heads = (self.blocks if stacked else self.blocks[0]).attention.heads
        shape = (batch, self.context, heads, self.embed.features // heads)
        if stacked:
            shape = (_layer_count(self.blocks), *shape)
            return jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)
        return tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
                     for _ in self.blocks)

    def extend(self, ids_BxT, position_B, cache) -> tuple[jax.Array, tuple]:
        """Logits (B, T, V) of T new ids, row b's at positions position_B[b] on, given the keys
        and values of every position before in `cache`; and the cache with theirs added. The
        same numbers as `__call__` on the whole sequence, computed once per position: a
        prefill writes the prompt (zeros after it are overwritten as the text grows), then
        each step adds one position."""
        length = ids_BxT.shape[1]
        positions_BxTxD = jax.vmap(lambda at: jax.lax.dynamic_slice_in_dim(
            self.positions[...], at, length))(position_B)
        x_BxTxD = self.embed(ids_BxT) + positions_BxTxD.astype(self.dtype)
        if isinstance(self.blocks, nnx.List):
            written = []
            for block, kept in zip(self.blocks, cache):
                x_BxTxD, kept = block.cached(x_BxTxD, kept, position_B)
                written.append(kept)
            return self.logits(self.norm(x_BxTxD)), tuple(written)
        graphdef, state = nnx.split(self.blocks)

        def layer(x_BxTxD, state_and_kept):
            state, kept = state_and_kept
            return nnx.merge(graphdef, state).cached(x_BxTxD, kept, position_B)

        x_BxTxD, written = jax.lax.scan(layer, x_BxTxD, (state, cache))
        return self.logits(self.norm(x_BxTxD)), written


class Encoder(nnx.Module):
    """A BERT-style classifier: bidirectional post-LayerNorm blocks over a sequence, then the
    first position's output through a tanh "pooler" layer and a linear head.

    With `vocab_size > 0` the inputs are (B, L) token ids; otherwise each input is a sequence
    of feature vectors, projected to `width`: an image (B, H, W, C) is read as H rows of W*C
    features. A learned [CLS] vector is put in front of the sequence; its output is pooled.
    Every position is attended to: sequences are of one fixed length, with no padding mask.
    """

    def __init__(self, *, input_shape, num_classes, layers=4, heads=4, width=256, vocab_size=0,
                 dropout=0.1, dtype="float32", param_dtype="float32", remat="none",
                 scan_layers=False, rngs: nnx.Rngs):
        self.remat = _check_remat(remat)
        self.dtype = compute_dtype(dtype)
        dtypes = dict(dtype=self.dtype, param_dtype=parameter_dtype(param_dtype))
        self.vocab_size = vocab_size
        if vocab_size:
            if len(input_shape) != 1:
                raise ValueError(f"model.vocab_size={vocab_size} means (length,) token ids, but "
                                 f"the inputs have shape {input_shape}; set model.vocab_size=0")
            self.embed = nnx.Embed(vocab_size, width,
                                   embedding_init=named(normal(0.02), "vocab", "embed"),
                                   **dtypes, rngs=rngs)
        else:
            if len(input_shape) < 2:
                raise ValueError(f"inputs of shape {input_shape} are not a sequence of feature "
                                 f"vectors; for token ids set model.vocab_size")
            features = math.prod(input_shape[1:])
            self.embed = nnx.Linear(features, width,
                                    kernel_init=named(default_kernel, "features", "embed"),
                                    bias_init=named(zeros, "embed"), **dtypes, rngs=rngs)
        length = input_shape[0] + 1  # and the [CLS] position
        self.cls = nnx.Param(named(normal(0.02), None, None, "embed")(
            rngs.params(), (1, 1, width), dtypes["param_dtype"]))
        self.positions = nnx.Param(named(normal(0.02), "positions", "embed")(
            rngs.params(), (length, width), dtypes["param_dtype"]))
        self.norm = layer_norm(width, dtypes, rngs)
        self.blocks = _blocks(layers, width, heads, False, False, dropout, dtypes, rngs,
                              scan_layers)
        self.pooler = nnx.Linear(width, width, kernel_init=named(default_kernel, "embed", None),
                                 bias_init=named(zeros, None), **dtypes, rngs=rngs)
        self.head = nnx.Linear(width, num_classes,
                               kernel_init=named(default_kernel, None, "classes"),
                               bias_init=named(zeros, "classes"), **dtypes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, train=False, rngs=None) -> jax.Array:
        rngs = _dropout_rngs(rngs)
        if not self.vocab_size:
            x = x.reshape(*x.shape[:2], -1).astype(self.dtype)
        x_BxLxD = self.embed(x)
        cls_Bx1xD = jnp.broadcast_to(self.cls[...], (x_BxLxD.shape[0], 1, x_BxLxD.shape[2]))
        x_BxLxD = jnp.concatenate([cls_Bx1xD.astype(self.dtype), x_BxLxD], axis=1)
        x_BxLxD = x_BxLxD + self.positions[: x_BxLxD.shape[1]].astype(self.dtype)
        x_BxLxD = self.dropout(self.norm(x_BxLxD), deterministic=not train, rngs=rngs)
        x_BxLxD = _run_blocks(self.blocks, x_BxLxD, train, rngs, self.remat)
        pooled_BxD = jnp.tanh(self.pooler(x_BxLxD[:, 0]))
        pooled_BxD = self.dropout(pooled_BxD, deterministic=not train, rngs=rngs)
        return self.head(pooled_BxD).astype(jnp.float32)
