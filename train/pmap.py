"""The `pmap` strategy, confined to one adapter: the rest of descent sees the canonical state
(one global array per leaf, replicated as under `dp`) and the global batch, whatever the
strategy.

`jax.pmap` maps a step over the devices, each with its share of the batch, and averages the
gradients with `lax.pmean`. Called inside `jax.jit` with the state unmapped (`in_axes=None`)
and returned unmapped (`out_axes=None`: after the `pmean` every device holds the same state),
it needs no copy of the state per device stacked on a leading axis: the compiled program is the
per-device step and its all-reduces, nothing stacked, gathered or broadcast around it.
"""
import jax
from flax import nnx

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


def canonical_step(step, mesh):
    """`step(state, batch)` built with `axis_name=AXIS` -> the same step as a function of the
    canonical state and the global batch, for `jax.jit` to compile with the shardings `dp`
    uses. `mesh`'s devices, in order, are the mapped devices, so each keeps the rows of the
    batch it already holds."""
    devices = list(mesh.devices.flat)
    mapped = jax.pmap(step, axis_name=AXIS, in_axes=(None, 0), out_axes=None, devices=devices)

    def step_on_global_batch(state, batch):
        per_device = jax.tree.map(
            lambda x: x.reshape(len(devices), x.shape[0] // len(devices), *x.shape[1:]), batch)
        return mapped(state, per_device)

    return step_on_global_batch
