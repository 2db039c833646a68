"""Logical names for the dimensions of parameters and activations, never mesh axes.

A net says what each dimension of a parameter is (`embed`, `mlp`, `heads`, `vocab`,
`conv_out`, ...) where it creates it, through flax's own sharding metadata (`named`); the
training code's rules table maps the names onto mesh axes (train/sharding.py). Activations
are constrained at block boundaries (`constrain`) by the same names, while a step is traced
under `rules` (the batch over the `data` and `fsdp` axes); elsewhere that is a no-op, so a net
runs anywhere as it is.
"""
import contextlib

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

_ACTIVE = []  # (mesh, {name: axis or tuple of axes}) while a step is traced under `rules`


def named(init, *names):
    """`init` (an initialiser) making arrays whose dimensions are called `names` (None for a
    dimension no rule splits). Not sharded when made: the trainer lays the state out."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


@contextlib.contextmanager
def rules(mesh, table: dict):
    """While tracing: `constrain` places activations on `mesh` as `table` maps their names."""
    _ACTIVE.append((mesh, table))
    try:
        yield
    finally:
        _ACTIVE.pop()


def constrain(x: jax.Array, *names) -> jax.Array:
    """`x`, whose dimensions are called `names` ("batch", None, ...), laid out as the active
    rules say; `x` itself where none are active."""
    if not _ACTIVE:
        return x
    mesh, table = _ACTIVE[-1]
    axes = [table.get(name) or None if name else None for name in names]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*axes)))
