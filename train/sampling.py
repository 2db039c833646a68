"""Text from a causal language model, one token at a time, for several prompts at once.

Each prompt sits left-aligned in a window of the model's `context` ids; every step draws one
token per prompt from the logits at its last filled position and writes it after it; a window
that is full slides by one. A model with `extend` and `empty_cache` (the GPT) keeps the keys and
values of every position it has read (a KV cache): the prompts are read once (the prefill), then
each step computes only the new position, so a step costs one position's work instead of the
whole window's. Both are compiled once, whatever the prompts' lengths: the prefill always reads
the whole window, zeros after the prompt, which later steps overwrite. A window that slides
moves every position, so from then on each step reads the window again, as without a cache.
"""
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from tqdm import tqdm

from train.sharding import batch_ways


def pick(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int = 0,
         top_p: float = 1.0) -> jax.Array:
    """One token id per row: the most likely with `temperature` 0; else drawn from
    softmax(logits / temperature), among the `top_k` most likely (0: all) and the fewest most
    likely whose probabilities sum to `top_p` (nucleus sampling; 1: all)."""
    if temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = logits_BxV / temperature
    if top_k and top_k < logits_BxV.shape[-1]:
        kth_Bx1 = jnp.sort(logits_BxV, axis=-1)[:, -top_k][:, None]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if top_p < 1:
        descending_BxV = -jnp.sort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(descending_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the likelier ones
        cutoff_Bx1 = jnp.min(jnp.where(before_BxV < top_p, descending_BxV, jnp.inf), axis=-1,
                             keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(key, logits_BxV, axis=-1)


def generate(model: nnx.Module, prompts: Sequence[np.ndarray], length: int, context: int, *,
             key: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             cache: bool = True, finished: Callable[[int, list[int]], bool] | None = None,
             progress: bool = False, sharding: NamedSharding | None = None
             ) -> list[list[int]]:
    """Up to `length` token ids drawn after each of `prompts` (as `pick` draws them, step i
    with `fold_in(key, i)`); a prompt whose ids so far make `finished(row, ids)` true gets no
    more, and the drawing ends when every prompt has. `cache=False` reads the whole window at
    every step even where the model could keep a cache (what the cache is measured against).
    With a batch `sharding` (the prompts over a mesh's `data` and `fsdp` axes), each device
    reads its share of the prompts, and its cache holds only theirs; rows are added to fill
    the axes (copies of the first prompt, whose tokens are dropped)."""
    graphdef, state = nnx.split(model)
    rows = len(prompts)
    if sharding is not None:
        share = batch_ways(sharding.mesh)
        prompts = [*prompts, *[prompts[0]] * (-rows % share)]
    put = (lambda x: x) if sharding is None else (lambda x: jax.device_put(x, sharding))
    batch = len(prompts)
    window_BxC = np.zeros((batch, context), np.int32)
    filled_B = np.zeros(batch, np.int32)
    for row, ids in enumerate(prompts):
        filled_B[row] = min(len(ids), context)
        window_BxC[row, :filled_B[row]] = np.asarray(ids)[len(ids) - filled_B[row]:]
    cached = cache and hasattr(model, "extend")
    logits_BxV, kept = _read_window(graphdef, cached, state, put(window_BxC), put(filled_B - 1))
    out, done = [[] for _ in prompts], np.zeros(batch, bool)
    done[rows:] = True  # the rows that fill the mesh
    for i in tqdm(range(length), unit="token", leave=False, disable=None if progress else True):
        tokens_B = np.asarray(_draw(logits_BxV, jax.random.fold_in(key, i), temperature, top_k,
                                    top_p))
        at_B = filled_B.copy()  # where each new token goes, if its window has room
        for row in np.flatnonzero(~done):
            out[row].append(int(tokens_B[row]))
            done[row] = finished is not None and finished(row, out[row])
        if done.all() or i == length - 1:
            break
        for row in range(batch):
            if filled_B[row] < context:
                window_BxC[row, filled_B[row]] = tokens_B[row]
                filled_B[row] += 1
            else:
                window_BxC[row] = np.roll(window_BxC[row], -1)
                window_BxC[row, -1] = tokens_B[row]
        if cached and (at_B < context).all():  # every new token has a place: read just it
            logits_BxV, kept = _read_next(graphdef, state,
                                          put(tokens_B[:, None].astype(np.int32)), put(at_B),
                                          kept)
        else:
            logits_BxV, kept = _read_window(graphdef, cached, state, put(window_BxC),
                                            put(filled_B - 1))
    return out[:rows]


# Compiled once per model structure and batch shape, for every call: the model's structure
# (its graphdef) and the sampling settings are static, the weights and ids are traced.

@functools.partial(jax.jit, static_argnums=(0, 1))
def _read_window(graphdef, cached: bool, state, window_BxC, last_B):
    """The logits at each row's last filled position, reading every position of the window;
    with `cached`, the cache of the window's keys and values too."""
    model = nnx.merge(graphdef, state)
    rows = jnp.arange(window_BxC.shape[0])
    if cached:
        logits_BxCxV, kept = model.extend(window_BxC, jnp.zeros_like(last_B),
                                          model.empty_cache(window_BxC.shape[0]))
        return logits_BxCxV[rows, last_B], kept
    logits_BxCxV = model(window_BxC, train=False)
    if logits_BxCxV.ndim != 3:
        raise ValueError("this model classifies whole inputs; it is not a language model "
                         "with logits at every position, so it cannot generate")
    return logits_BxCxV[rows, last_B], None


@functools.partial(jax.jit, static_argnums=0, donate_argnums=4)  # the cache: updated in place
def _read_next(graphdef, state, ids_Bx1, position_B, kept):
    logits_Bx1xV, kept = nnx.merge(graphdef, state).extend(ids_Bx1, position_B, kept)
    return logits_Bx1xV[:, 0], kept


_draw = jax.jit(pick, static_argnums=(2, 3, 4))
