"""The compiled steps and shardings for one model, optimizer, mesh and strategy."""
import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.extend import core as jex_core

from train import compilation, pmap, sharding
from train.dataset import Dataset, InMemory, check_dataset
from train.losses import make_task
from train.optimizers import learning_rate_schedule, make_optimizer
from train.sharding import check_accumulation
from train.state import TrainState, create_state
from train.step import (check_chunked, make_eval_step, make_gradient_step, make_train_step,
                        summarize_eval)


def total_steps(config, steps_per_epoch: int) -> int:
    return config.steps or config.epochs * steps_per_epoch


LOOPS = ("scan", "while")                      # lax.scan and lax.map; lax.while_loop
PRODUCTS = ("dot_general", "conv_general_dilated")  # where a step's FLOPs are


def loops_over_products(jaxpr) -> bool:
    """Whether `jaxpr`, or one inside it, loops over matrix products or convolutions (not over
    the few integer rounds of a random-number generator, which XLA also writes as a loop)."""
    for eqn in jaxpr.eqns:
        inner = [getattr(j, "jaxpr", j) for j in jex_core.jaxprs_in_params(eqn.params)]
        if eqn.primitive.name in LOOPS and any(_uses(j, PRODUCTS) for j in inner):
            return True
        if any(loops_over_products(j) for j in inner):
            return True
    return False


def _uses(jaxpr, primitives) -> bool:
    return any(eqn.primitive.name in primitives or any(
        _uses(getattr(j, "jaxpr", j), primitives) for j in jex_core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns)


# Evaluation steps dispatched before waiting for them: XLA's collectives on CPU devices (a
# machine's simulated ones) have aborted the process with many programs queued, under load.
EVAL_IN_FLIGHT = 8


class DeviceFeed(NamedTuple):
    """A training split kept on the devices: each step is sent a plan (the batch's row numbers
    and its augmentation draws, a few numbers per example) and reads its batch there."""
    arrays: dict            # the split's arrays, replicated on every device of the mesh
    step: Callable          # jitted (state, arrays, plan) -> (state, metrics)
    put: Callable           # a host plan -> global arrays on the mesh


class Compiled(NamedTuple):
    step: Callable          # the compiled train step: (state, batch) -> (state, metrics)
    seconds: float          # how long compiling it took
    flops: float | None     # XLA's count of one step's FLOPs, per device, where it has one
    memory: object | None   # XLA's memory analysis of the compiled step, where it has one
    loops: bool = False     # the step loops over matrix products: XLA's count would be short


class Trainer:
    """Everything about a run that does not change while it trains.

    A state has one layout, whatever the strategy: a pytree of global arrays laid out by
    `state_sharding` (`initial_state`, what `train_step` takes and returns, what checkpoints
    hold and `evaluate` takes). `train_step` takes the global batch `put` makes; `pmap`'s
    mapping over devices lives inside it (`train.pmap`).
    """

    def __init__(self, config, model: nnx.Module | Callable[[], nnx.Module], dataset: Dataset,
                 *, materialize: bool = True):
        """`model` is a built model, or a function that builds it: then the state is never
        built eagerly, array by array, but traced for its shapes and created by one compiled
        program directly in its place on the mesh (each device makes only its share of an
        `fsdp` state). `dataset` is what the run trains on: its steps per epoch (at
        `dataset.batch_size`) shape the learning-rate schedule, and its task, `classification`
        (integer labels) or `regression` (float targets), the metrics beside the loss.
        `config` has every field of the defaults (one saved by an older descent is completed
        before it gets here). With `materialize=False` (and a function for `model`), the state
        is never made: `initial_state` holds each array's shape, dtype and sharding, enough to
        compile the steps for it (`descent plan`)."""
        check_dataset(dataset)
        compilation.use_cache(config.compile_cache)  # before anything compiles
        steps_per_epoch = dataset.steps_per_epoch(config.dataset.batch_size)
        self.steps_per_epoch = steps_per_epoch
        self.strategy = config.parallel.strategy
        sharding.check_strategy(self.strategy)
        self.mesh = sharding.make_mesh(config.parallel.mesh, strategy=self.strategy)
        rules = sharding.parse_rules(config.parallel.get("rules", ""))
        # flax's logical axis rules for the activations the nets constrain by name
        self._rules = (*((name, axis or None) for name, axis in rules.items()),
                       ("batch", sharding.BATCH))
        sharding.check_batch_size(config.dataset.batch_size, self.mesh)
        sharding.check_batch_size(config.dataset.eval_batch_size, self.mesh,
                                  "dataset.eval_batch_size")
        self.batch_size = config.dataset.batch_size  # global, per update
        num_steps = total_steps(config, steps_per_epoch)
        self.tx = make_optimizer(config.optimizer, num_steps, steps_per_epoch,
                                 config.dataset.batch_size)
        # jitted: one dispatch per logged step instead of the schedule's eager ops one by one
        self.learning_rate = jax.jit(learning_rate_schedule(
            config.optimizer, num_steps, steps_per_epoch, config.dataset.batch_size))
        # Evaluation reports the plain loss: label smoothing is a training-time regulariser.
        self.task = make_task(dataset.task, config.loss.name, config.loss.label_smoothing,
                              config.loss.chunk)
        opt = config.optimizer
        self.accumulate_steps = opt.accumulate_steps
        check_accumulation(config.dataset.batch_size, self.accumulate_steps, self.mesh)
        self.ema_decay = opt.ema_decay

        def fresh_state(model):
            check_chunked(model, self.task, dataset.input_shape)
            # a language model whose loss may be made in chunks (loss.chunk; `descent plan`)
            self.chunkable = hasattr(model, "features") and hasattr(model, "logits")
            return create_state(model, self.tx, config.seed, ema=self.ema_decay > 0)

        self.batch_sharding = sharding.batch_sharding(self.mesh)
        if isinstance(model, nnx.Module):
            self.graphdef, state = fresh_state(model)
            self.state_sharding = sharding.state_sharding(state, self.mesh, self.strategy, rules)
            self.initial_state = jax.device_put(state, self.state_sharding)
        else:
            self.graphdef, abstract_state = nnx.eval_shape(lambda: fresh_state(model()))
            self.state_sharding = sharding.state_sharding(abstract_state, self.mesh,
                                                          self.strategy, rules)
            if materialize:
                init = jax.jit(lambda: fresh_state(model())[1],
                               out_shardings=self.state_sharding)
                self.initial_state = init.lower().compile(**_compile_once(self.mesh))()
            else:
                self.initial_state = jax.tree.map(
                    lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where),
                    abstract_state, self.state_sharding)
        replicated = sharding.replicated(self.mesh)
        l2 = opt.weight_decay if opt.name != "adamw" else 0.0  # adamw's decay is decoupled
        step_of = functools.partial(
            make_train_step, task=self.task, tx=self.tx,
            layer_grad_norms=config.log.layer_grad_norms,
            accumulate_steps=self.accumulate_steps, ema_decay=self.ema_decay, l2=l2,
            report_objective=bool(config.loss.label_smoothing or l2))
        # The program XLA counts FLOPs on: the global step under `jit`; one device's under
        # `pmap` (which is what each device runs, its optimizer update whole).
        self._devices_per_traced_program = self.mesh.devices.size
        if self.strategy == "pmap":
            graphdef = pmap.with_batch_norm_over_devices(self.graphdef, self.initial_state)
            self._step = pmap.canonical_step(step_of(graphdef, axis_name=pmap.AXIS), self.mesh)
            self._devices_per_traced_program = 1
        else:
            self._step = self._constrained(step_of(self.graphdef))
        self.train_step = jax.jit(
            self._step, in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated), donate_argnums=0)
        self.eval_step = jax.jit(
            self._constrained(make_eval_step(self.graphdef, self.task)),
            in_shardings=(self.state_sharding, self.batch_sharding), out_shardings=replicated)
        self._gradients = jax.jit(self._constrained(make_gradient_step(self.graphdef,
                                                                       self.task)),
                                  in_shardings=(self.state_sharding, self.batch_sharding),
                                  out_shardings=self.state_sharding.params)

    def _constrained(self, step: Callable) -> Callable:
        """`step` traced under the run's mesh and logical axis rules (flax's), by which the nets
        place their activations at block boundaries (the batch over `data` and `fsdp`); under
        `pmap` the step runs per device, and places nothing."""
        if self.strategy == "pmap":
            return step

        @functools.wraps(step)
        def traced(*args):
            with (jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh),
                  spmd.logical_axis_rules(self._rules)):
                return step(*args)
        return traced

    def put(self, batch: dict) -> dict:
        """This process's numpy batch -> global arrays on the mesh, as `train_step` takes them."""
        return sharding.put_batch(batch, self.batch_sharding)

    def fetch(self, metrics: dict) -> dict:
        """Device metrics (identical on every device) -> host floats."""
        return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0])
                for k, v in metrics.items()}

    def gradients(self, state: TrainState, batch: dict):
        """The gradient the next step would apply to the canonical `state` for this process's
        numpy `batch`, without applying it: a pytree shaped like `state.params`."""
        return self._gradients(state, sharding.put_batch(batch, self.batch_sharding))

    def device_feed(self, dataset: Dataset) -> DeviceFeed | None:
        """Places `dataset`'s training split on every device of the mesh once, for a step that
        reads its batch there (`dataset.device_batch`: gather, augment, normalise, compiled
        into the step) instead of receiving it from the host; None for a dataset that is not
        held in memory."""
        if not isinstance(dataset, InMemory):
            return None
        replicated = sharding.replicated(self.mesh)
        arrays = sharding.put_replicated(dataset.device_arrays("train"), replicated)

        def step_on_device(state, arrays, plan):
            batch = jax.lax.with_sharding_constraint(dataset.device_batch(arrays, plan),
                                                     self.batch_sharding)
            return self._step(state, batch)

        step = jax.jit(step_on_device, in_shardings=(self.state_sharding, replicated, replicated),
                       out_shardings=(self.state_sharding, replicated), donate_argnums=0)
        return DeviceFeed(arrays, step, lambda plan: sharding.put_replicated(plan, replicated))

    def compile(self, state: TrainState, batch: dict, feed: DeviceFeed | None = None
                ) -> Compiled:
        """Compiles `train_step` ahead of time for `state` and a global `batch`
        like the ones to come; it runs only on arrays of exactly those shapes, so a later step
        never recompiles silently. With a `feed`, `batch` is a placed plan and the step reads
        the batch from the feed's arrays."""
        start = time.perf_counter()
        if feed is None:
            traced = self.train_step.trace(state, batch)
            lowered = traced.lower()
            executable = step = lowered.compile()
        else:
            traced = feed.step.trace(state, feed.arrays, batch)
            lowered = traced.lower()
            executable = lowered.compile()

            def step(state, plan):
                return executable(state, feed.arrays, plan)
        seconds = time.perf_counter() - start
        # Counted on the program as traced, before the backend rewrites it: a GPU's compiled
        # program hides its convolutions in cuDNN calls that XLA's count leaves out. XLA counts
        # a loop's body once, whatever its trip count (a scan over 12 stacked blocks counted as
        # one block), so a step that loops over matrix products or convolutions
        # (model.scan_layers, a recurrent net, loss.chunk, optimizer.accumulate_steps) gets no
        # count rather than a wrong one.
        loops = loops_over_products(traced.jaxpr.jaxpr)
        try:
            flops = None if loops else (float(lowered.cost_analysis()["flops"])
                                        / self._devices_per_traced_program)
        except Exception:  # noqa: BLE001 - a backend without cost analysis: no FLOP/s, no MFU
            flops = None
        try:
            memory = executable.memory_analysis()
        except Exception:  # noqa: BLE001 - a backend without memory analysis
            memory = None
        return Compiled(step, seconds, flops, memory, loops)

    def weights(self, state: TrainState, which: str = "raw") -> TrainState:
        """`state` with the parameters `which` names: `raw` (as trained) or `ema` (their moving
        average, `optimizer.ema_decay`)."""
        if which == "raw":
            return state
        if which != "ema":
            raise ValueError(f"weights {which!r} is not 'raw' or 'ema'")
        if state.ema_params is None:
            raise ValueError("this run keeps no moving average of its weights (it was trained "
                             "with optimizer.ema_decay=0); evaluate its raw weights")
        return state.replace(params=state.ema_params)

    def evaluate(self, state: TrainState, batches, weights: str = "raw") -> dict:
        """Mean loss and task metrics (accuracy, or mean absolute error) of the canonical
        `state` over every unmasked example, and the number of examples (targets, for text).
        `weights` picks the raw parameters or their moving average (`ema`)."""
        state = self.weights(state, weights)
        sums = None
        for i, batch in enumerate(batches):
            out = self.eval_step(state, sharding.put_batch(batch, self.batch_sharding))
            sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
            if i % EVAL_IN_FLIGHT == EVAL_IN_FLIGHT - 1:
                jax.block_until_ready(sums)
        return summarize_eval(self.fetch(sums))


def _compile_once(mesh) -> dict:
    """Options for compiling a program that runs once (making the state): on CPU, XLA's
    backend optimisation level 1 halves the compilation of a 300k-parameter MLP's state (1.17 s
    to 0.58 s, a tenth of a digits run) and makes the same values (tests/test_init.py)."""
    if {d.platform for d in mesh.devices.flat} == {"cpu"}:
        return {"compiler_options": {"xla_backend_optimization_level": 1}}
    return {}
