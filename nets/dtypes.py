"""Compute dtypes by name. Parameters are always float32; activations and matmuls run in the
compute dtype, and logits come back as float32 so losses are computed at full precision."""
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """Returns the dtype called `name`; an unknown name lists the known ones."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None
