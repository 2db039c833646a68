"""Dtypes by name. Parameters are float32 (the Transformers also take `param_dtype=bfloat16`);
activations and matmuls run in the compute dtype, and logits come back as float32 so losses are
computed at full precision.
float64 is for numerical checks (gradients against finite differences): it needs JAX's 64-bit
mode (`with jax.enable_x64(True):`) and parameters cast to float64 by the caller."""
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str):
    """Returns the dtype called `name`; an unknown name lists the known ones."""
    try:
        dtype = DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("model.dtype='float64' needs JAX's 64-bit mode: build and run the "
                         "model inside `with jax.enable_x64(True):`")
    return dtype


def output_dtype(dtype):
    """Logits' dtype: float32, or float64 when computing in float64."""
    return jnp.promote_types(dtype, jnp.float32)


PARAM_DTYPES = ("float32", "bfloat16")


def parameter_dtype(name: str):
    """The dtype parameters are kept in: float32 (the default) or bfloat16, which halves the
    parameters' and the optimizer state's memory (the moments take the parameters' dtype)."""
    if name not in PARAM_DTYPES:
        raise ValueError(f"unknown model.param_dtype {name!r}; known: {', '.join(PARAM_DTYPES)}")
    return DTYPES[name]
