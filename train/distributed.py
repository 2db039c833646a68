"""Joining JAX's multi-controller runtime: one process per host, every process runs this code.

`jax.distributed.initialize` aborts the whole process (not a Python exception) when the
coordinator cannot be reached in time, so the address is checked first and a clear error
names it.
"""
import os
import socket
import sys
import time

import jax

# Cluster environments where `jax.distributed.initialize()` finds its arguments by itself.
_AUTO_DETECTED = {
    "SLURM_NTASKS": "Slurm",           # srun: one task per host (or per GPU)
    "OMPI_COMM_WORLD_SIZE": "Open MPI",  # mpirun
}


def cluster_size_from_environment() -> tuple[str, int] | None:
    """(scheduler, number of processes) when launched by Slurm or Open MPI with more than one."""
    for variable, name in _AUTO_DETECTED.items():
        if int(os.environ.get(variable, "1")) > 1:
            return name, int(os.environ[variable])
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> None:
    """Joins the processes of one run.

    With `coordinator`, `num_processes` and `process_id` (localhost CPU runs, hand-made clusters)
    they are used as given; without them, on Cloud TPU, Slurm and Open MPI, JAX finds them.
    On CPU the collectives go over gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
    if coordinator is None:
        jax.distributed.initialize(initialization_timeout=timeout_s)
        return
    if num_processes is None or process_id is None:
        raise ValueError("--coordinator needs --num-processes and --process-id too")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id} is not in 0..{num_processes - 1}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator {coordinator!r} is not HOST:PORT")
    if process_id != 0:
        _wait_for(host, int(port), timeout_s, coordinator)
    else:
        print(f"process 0: coordinating {num_processes} processes at {coordinator} "
              f"(waiting up to {timeout_s} s for them)", file=sys.stderr)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)


def _wait_for(host: str, port: int, timeout_s: float, address: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"could not reach the coordinator at {address} within {timeout_s} s; "
                    f"check --coordinator and that process 0 is running") from None
            time.sleep(0.2)
