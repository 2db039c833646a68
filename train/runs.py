"""What the training loop trains: `Runs`, the few things that differ between a run alone
and a group of runs trained as one program, and `One`, a run alone (`train.many.Group` is a
group). `train.loop` does everything else, once, for both.
"""
import itertools
from collections.abc import Iterator
from typing import Protocol

import jax

from train import sharding
from train.dataset import Dataset
from train.optimizers import frozen_size
from train.state import TrainState, num_params
from train.trainer import Trainer


class Runs(Protocol):
    """The runs `train_runs` trains together: what differs between a run alone and a group.
    The *running* state is what `step` takes: a run alone's is its canonical state (what
    checkpoints hold and `Trainer.evaluate` takes), a group's its runs' states stacked."""
    count: int
    trainers: list[Trainer]  # one per run
    devices: list            # the devices a step runs on

    def join(self, states: list[TrainState]): ...           # canonical states -> running

    def states(self, running) -> list[TrainState]: ...       # running -> canonical, per run

    def batches(self, step: int, num_steps: int) -> Iterator[tuple[int, object]]: ...

    def compile(self, running, batch) -> tuple[float, float | None]:
        """Compiles the step for batches like `batch`: (seconds, FLOPs of a run's step per
        device, where XLA counts them)."""

    def step(self, running, batch) -> tuple[object, dict]: ...

    def fetch(self, metrics: dict) -> list[dict]: ...        # device metrics -> floats, per run

    def learning_rates(self, step: int) -> list[float]: ...  # each run's at update `step`

    def evaluate(self, running, split: str, weights: str) -> list[dict]: ...

    def starting_line(self, step: int, num_steps: int) -> str: ...


class One:
    """A run alone: its Trainer's compiled step on the run's mesh, fed from the host or, for a
    dataset held in memory, from its training split kept on the devices."""
    count = 1

    def __init__(self, trainer: Trainer, dataset: Dataset, config):
        self.trainer, self.trainers, self.dataset, self.config = trainer, [trainer], dataset, config
        self.devices = list(trainer.mesh.devices.flat)
        self._shard = dict(process_index=jax.process_index(),
                           process_count=jax.process_count())
        self._feed, self._compiled = None, None

    def join(self, states: list[TrainState]) -> TrainState:
        return states[0]  # a run alone trains its canonical state

    def states(self, running: TrainState) -> list[TrainState]:
        return [running]

    def batches(self, step: int, num_steps: int) -> Iterator[tuple[int, dict]]:
        """(step number, this process's batch) for every step after `step`, epoch after epoch,
        up to `num_steps` (which may end mid-epoch); with the data on the devices, (step
        number, the global batch's plan) instead."""
        if step < num_steps and self.config.dataset.on_device:
            self._feed = self.trainer.device_feed(self.dataset)  # None: not held in memory
        return self._batches(step, num_steps)

    def _batches(self, step: int, num_steps: int) -> Iterator[tuple[int, dict]]:
        batch_size, seed = self.config.dataset.batch_size, self.config.seed
        steps_per_epoch = self.dataset.steps_per_epoch(batch_size)
        while step < num_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            end = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)
            if self._feed is None:
                batches = self.dataset.train_batches(batch_size, seed=seed, epoch=epoch,
                                                     start=offset, **self._shard)
            else:
                batches = self.dataset.train_plans(batch_size, seed=seed, epoch=epoch,
                                                   start=offset)
            for batch in itertools.islice(batches, end - offset):
                step += 1
                yield step, batch

    def _put(self, batch: dict) -> dict:
        return self._feed.put(batch) if self._feed else self.trainer.put(batch)

    def compile(self, running, batch) -> tuple[float, float | None]:
        self._compiled = self.trainer.compile(running, self._put(batch), self._feed)
        return self._compiled.seconds, self._compiled.flops

    def step(self, running, batch):
        return self._compiled.step(running, self._put(batch))

    def fetch(self, metrics: dict) -> list[dict]:
        return [self.trainer.fetch(metrics)]

    def learning_rates(self, step: int) -> list[float]:
        return [float(self.trainer.learning_rate(step))]

    def evaluate(self, running, split: str, weights: str) -> list[dict]:
        batches = self.dataset.eval_batches(split, self.config.dataset.eval_batch_size,
                                            **self._shard)
        return [self.trainer.evaluate(running, batches, weights)]

    def starting_line(self, step: int, num_steps: int) -> str:
        if step >= num_steps:
            return (f"this run is finished: its checkpoint at step {step} is the last of its "
                    f"{num_steps} steps. To train it further, raise --config.epochs (or "
                    f"--config.steps)")
        trainer, batch_size = self.trainer, self.config.dataset.batch_size
        k = trainer.accumulate_steps
        micro = f", accumulated over {k} micro-batches of {batch_size // k}" if k > 1 else ""
        frozen = frozen_size(trainer.initial_state.params, self.config.optimizer.freeze)
        frozen = f" ({frozen:,} of them frozen)" if frozen else ""
        return (f"training {num_params(trainer.initial_state):,} parameters{frozen} for "
                f"{num_steps} steps ({self.dataset.steps_per_epoch(batch_size)} per epoch, batch "
                f"{batch_size}{micro}) on {len(self.devices)} {self.devices[0].platform} "
                f"device(s) in {jax.process_count()} process(es), strategy {trainer.strategy}"
                f"{_mesh(trainer.mesh)}")


def _mesh(mesh) -> str:
    """', mesh fsdp=2,tensor=4' where the mesh has more than a data axis; nothing otherwise."""
    shown = sharding.describe(mesh)
    return f", mesh {shown}" if "fsdp" in shown or "tensor" in shown else ""
