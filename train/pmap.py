"""The `pmap` strategy, confined to one adapter: the rest of descent sees the canonical state
(one global array per leaf, replicated as under `dp`) and the global batch, whatever the
strategy.

The strategy is pmap's program: each device runs the step on its share of the batch and the
gradients are averaged with `lax.pmean`. It is written as `jax.shard_map` over the mesh, the
form `jax.pmap` itself takes since JAX 0.8 (a `jit` of a `shard_map`), because that form also
nests in a `jax.jit` of the global state and batch across processes: `jax.pmap` called inside
a `jit` maps over the local devices only. The state goes in and comes out replicated
(`P()`: after the `pmean` every device holds the same), so no copy of it per device is stacked
on a leading axis, gathered or broadcast.
"""
import jax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

AXIS = "data"  # the mapped axis: the mesh's data axis, over which the batch is split


def with_batch_norm_over_devices(graphdef: nnx.GraphDef, state) -> nnx.GraphDef:
    """`graphdef` with every `BatchNorm` taking its statistics over the whole global batch
    (`axis_name=AXIS`), as it does under `jit`, instead of over one device's share. Built on a
    copy of the model's graph: the caller's model is left as it was."""
    def rebuilt(state):
        model = nnx.merge(graphdef, state.params, state.model_state)
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.BatchNorm):
                module.axis_name = AXIS
        return model

    return nnx.graphdef(nnx.eval_shape(rebuilt, state))


def canonical_step(step, mesh: Mesh):
    """`step(state, batch)` built with `axis_name=AXIS` -> the same step as a function of the
    canonical state and the global batch, for `jax.jit` to compile with the shardings `dp`
    uses: each device steps on the rows of the batch it holds."""
    # Unchecked, as `jax.pmap` runs it: with the check on, the gradient with respect to the
    # replicated parameters comes out already summed over the devices, and the step's `pmean`
    # would average sums (measured: the tiny MLP 4e-4 away from one device after 20 steps).
    return jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                         check_vma=False)
