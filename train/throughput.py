"""What a step achieves on the hardware: FLOP/s and utilisation against the device's peak, peak
memory, and `jax.profiler` traces of chosen steps."""
import logging
import os

import jax

from train import storage
from train.workdir import check_no_links, refuse_foreign

log = logging.getLogger(__name__)

# Peak dense bfloat16 FLOP/s per device by `device_kind` (vendor data sheets, without sparsity).
# A device not listed gets no utilisation figure rather than a guessed one.
PEAK_BF16 = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops(device) -> float | None:
    """The device's peak dense bfloat16 FLOP/s, or None when its kind is not in `PEAK_BF16`."""
    return PEAK_BF16.get(device.device_kind)


def peak_memory_bytes(devices) -> int | None:
    """The most memory any of `devices` has held at once, where the backend reports it (GPU and
    TPU do; the CPU does not)."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - a backend without memory statistics
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def speed(steps: int, seconds: float, batch_size: int, flops_per_device: float | None,
          devices) -> dict:
    """examples/s and steps/s over `steps` that took `seconds`; with XLA's FLOP count of one
    step on one device, the FLOP/s of all `devices` together and, where the device's peak is
    known, its utilisation (`mfu`: the step's FLOPs, backward and optimizer included,
    over the peak dense bfloat16 FLOP/s)."""
    out = {"examples_per_s": steps * batch_size / seconds, "steps_per_s": steps / seconds}
    if flops_per_device:
        out["flops_per_s"] = flops_per_device * len(devices) * steps / seconds
        peak = peak_flops(devices[0])
        if peak:
            out["mfu"] = flops_per_device * steps / seconds / peak
    memory = peak_memory_bytes(d for d in devices if d.process_index == jax.process_index())
    if memory is not None:
        out["peak_memory_bytes"] = memory
    return out


PROFILE_DIR = "profile"


class Profile:
    """Traces steps `start_step` .. `start_step + num_steps - 1` with `jax.profiler` into
    `<workdir>/profile` (process 0): open it with `tensorboard --logdir WORKDIR` (Profile tab,
    with the tensorboard-plugin-profile package) or load its `perfetto_trace.json.gz` into
    https://ui.perfetto.dev. `start_step` 0 traces nothing."""

    def __init__(self, start_step: int, num_steps: int, workdir: str, last_step: int):
        if start_step > last_step:
            raise ValueError(f"profile.start_step={start_step} is after the run's last step "
                             f"{last_step}; trace a step the run reaches")
        if start_step and storage.is_url(workdir):
            raise ValueError(f"profile.start_step={start_step}: the profiler writes its trace to "
                             f"a folder on this machine, and the work directory is a bucket; "
                             f"profile a run with a local --workdir")
        self.start, self.stop = start_step, min(start_step + num_steps - 1, last_step)
        self.active = bool(start_step) and jax.process_index() == 0
        self.directory = os.path.join(workdir, PROFILE_DIR)
        self.tracing = False

    def resuming_at(self, first_step: int) -> None:
        """A resumed run starts at `first_step`: steps before it are not traced again."""
        if self.active and self.start < first_step:
            log.warning("profile.start_step=%s is before the step this run resumes at (%s): "
                        "nothing is traced", self.start, first_step)
            self.active = False

    def before(self, step: int) -> None:
        if self.active and step == self.start:
            if os.path.lexists(self.directory):  # checked with the work directory; and now
                refuse_foreign(self.directory, os.lstat(self.directory))
                check_no_links(self.directory)
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing = True

    def after(self, step: int, state) -> None:
        if self.tracing and step == self.stop:
            jax.block_until_ready(state)  # the trace holds the steps' execution, not dispatch
            self.close()
            log.info("profiled steps %s-%s into %s: open it with tensorboard --logdir %s "
                     "(Profile tab), or its perfetto_trace.json.gz in https://ui.perfetto.dev",
                     self.start, self.stop, self.directory, os.path.dirname(self.directory))

    def close(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
