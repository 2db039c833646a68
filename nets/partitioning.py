"""Logical names for the dimensions of parameters and activations, never mesh axes.

A net says what each dimension of a parameter is (`embed`, `mlp`, `heads`, `vocab`,
`conv_out`, ...) where it creates it, through flax's own sharding metadata (`named`); the
training code's rules table maps the names onto mesh axes (train/sharding.py). Activations
are constrained at block boundaries (`constrain`) by the same names, through flax's logical
axis rules and the mesh JAX is tracing for, as the training step sets both (the batch over the
`data` and `fsdp` axes); where neither is set that is a no-op, so a net runs anywhere as it is.
"""
import jax
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec as P


def named(init, *names):
    """`init` (an initialiser) making arrays whose dimensions are called `names` (None for a
    dimension no rule splits). Not sharded when made: the trainer lays the state out."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def constrain(x: jax.Array, *names) -> jax.Array:
    """`x`, whose dimensions are called `names` ("batch", None, ...), laid out as the active
    logical axis rules say on the active mesh; `x` itself where there are none."""
    rules = dict(spmd.get_logical_axis_rules())
    if not rules or jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, P(*(rules.get(n) if n else None for n in names)))
