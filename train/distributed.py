"""Joining JAX's multi-controller runtime: one process per host (or per accelerator), every
process runs this code.

`jax.distributed.initialize` aborts the whole process (not a Python exception) when the
coordinator cannot be reached in time, so the address is checked first and a clear error
names it.

Which local devices a process drives is decided here, not left to JAX: under Slurm and Open
MPI, JAX's auto-detection restricts every process to the one GPU numbered by its local rank
(`local_device_ids=[SLURM_LOCALID]`), so one task per node with 8 GPUs would silently train on
one. `plan_from_environment` reads the launcher's variables and `initialize` passes its choice.
"""
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import NamedTuple

import jax

_log = logging.getLogger(__name__)
# Launcher variables: (scheduler, process count, process id, local rank).
_SLURM = ("Slurm", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI = ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
             "OMPI_COMM_WORLD_LOCAL_RANK")
# What JAX's own detection reads (jax/_src/clusters/slurm_cluster.py, ompi_cluster.py): without
# these, `jax.distributed.initialize()` cannot find the coordinator.
_SLURM_NEEDED_BY_JAX = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                        "SLURM_LOCALID")
_OPEN_MPI_NEEDED_BY_JAX = ("OMPI_MCA_orte_hnp_uri",)
# Per-step first: inside `sbatch --ntasks-per-node 8`, `srun --ntasks-per-node 1` changes the step.
_SLURM_TASKS_PER_NODE = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                         "SLURM_NTASKS_PER_NODE")
_VISIBLE_DEVICES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
_TPU = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")


class Plan(NamedTuple):
    """How this process joins a run, read from the launcher's environment.

    `local_device_ids` is passed to `jax.distributed.initialize`: a list of indices among the
    GPUs this process sees (an empty list: all of them), or None to leave the choice to JAX
    (Cloud TPU, JAX_LOCAL_DEVICE_IDS set, no launcher).
    """
    scheduler: str | None        # "Slurm", "Open MPI", "Cloud TPU" or None
    num_processes: int | None    # None where JAX finds it (Cloud TPU without the variables)
    process_id: int | None
    local_device_ids: list[int] | None
    note: str                    # one line: what was chosen and why


def plan_from_environment(env: Mapping[str, str] = os.environ) -> Plan:
    """Reads Slurm, Open MPI or Cloud TPU variables from `env`; pure, so tests pass a dict.

    Under Slurm and Open MPI a process with the node to itself drives every GPU it sees; one
    process per GPU drives the GPU of its local rank; n processes sharing k*n GPUs take k each.
    Raises ValueError when the launch cannot work (the fix is in the message).
    """
    launcher = _launcher(env)
    if launcher is None:
        if any(env.get(name) for name in _TPU):
            return _tpu_plan(env)
        return Plan(None, None, None, None, "no Slurm, Open MPI or Cloud TPU variables found")
    scheduler, num_processes, process_id, local_rank = launcher
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        return Plan(scheduler, num_processes, process_id, None,
                    f"{scheduler}: {num_processes} processes; local devices "
                    f"{env['JAX_LOCAL_DEVICE_IDS']} as JAX_LOCAL_DEVICE_IDS says")
    tasks, tasks_source = _tasks_on_node(env, scheduler, num_processes)
    ids, why = _local_devices(env, scheduler, tasks, tasks_source, local_rank)
    per_node = f"{tasks} per node" if tasks else "how many per node is unknown"
    chosen = (f"GPU{'s' if len(ids) > 1 else ''} {_ranges(ids)}" if ids
              else "every GPU it sees")
    return Plan(scheduler, num_processes, process_id, ids,
                f"{scheduler}: {num_processes} process{'es' if num_processes > 1 else ''}, "
                f"{per_node}; process {process_id} uses {chosen} ({why})")


def cluster_size_from_environment(env: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """(scheduler, number of processes) when launched by Slurm, Open MPI or on a Cloud TPU
    slice with more than one process."""
    launcher = _launcher(env)
    if launcher is not None:
        scheduler, num_processes, _, _ = launcher
        return (scheduler, num_processes) if num_processes > 1 else None
    hosts = _tpu_hosts(env)
    return ("Cloud TPU", hosts) if hosts and hosts > 1 else None


def _launcher(env: Mapping[str, str]) -> tuple[str, int, int, int] | None:
    for scheduler, size, rank, local_rank in (_OPEN_MPI, _SLURM):  # JAX's order of detection
        if size in env:
            return (scheduler, _integer(env, size), _integer(env, rank, 0),
                    _integer(env, local_rank, 0))
    return None


def _check_jax_can_detect(env: Mapping[str, str], plan: Plan) -> None:
    scheduler, num_processes = plan.scheduler, plan.num_processes
    if scheduler not in ("Slurm", "Open MPI"):
        return
    needed = _SLURM_NEEDED_BY_JAX if scheduler == "Slurm" else _OPEN_MPI_NEEDED_BY_JAX
    missing = [name for name in needed if name not in env]
    if num_processes > 1 and missing:
        how = ("start every task with srun (inside an sbatch script too)" if scheduler == "Slurm"
               else "this Open MPI (5 or later) is not one JAX detects")
        rank = _SLURM[2] if scheduler == "Slurm" else _OPEN_MPI[2]
        raise ValueError(
            f"{scheduler} says {num_processes} processes but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set, so JAX cannot find the "
            f"coordinator: {how}, or name it yourself with --coordinator HOST:PORT "
            f"--num-processes {num_processes} --process-id ${rank}")


def _tasks_on_node(env: Mapping[str, str], scheduler: str,
                   num_processes: int) -> tuple[int | None, str]:
    if scheduler == "Open MPI":
        name = "OMPI_COMM_WORLD_LOCAL_SIZE"
        if name not in env:
            return None, f"{name} is not set"
        return _integer(env, name), f"{name}={env[name]}"
    for name in _SLURM_TASKS_PER_NODE:
        if name in env:
            counts = _expand_slurm_counts(env[name])
            if counts is None:
                return None, f"{name}={env[name]} is not a task count"
            if len(set(counts)) > 1:
                return None, f"{name}={env[name]}: nodes run different numbers of tasks"
            return counts[0], f"{name}={env[name]}"
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
    if nodes and nodes.isdigit() and int(nodes) == num_processes:  # every node runs >= 1 task
        return 1, f"{num_processes} tasks on {nodes} nodes"
    return None, "no SLURM_*TASKS_PER_NODE variable"


def _expand_slurm_counts(text: str) -> list[int] | None:
    """"8(x3),4" -> [8, 8, 8, 4], Slurm's compressed list of tasks per node."""
    counts = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            return None
        counts += [int(match[1])] * int(match[2] or 1)
    return counts or None


def _local_devices(env: Mapping[str, str], scheduler: str, tasks: int | None, tasks_source: str,
                   local_rank: int) -> tuple[list[int], str]:
    visible, visible_source = _visible_gpus(env)
    on_node, on_node_source = _slurm_gpus_on_node(env) if scheduler == "Slurm" else (None, "")
    if visible is None and on_node is not None:  # no *_VISIBLE_DEVICES: it sees the node's GPUs
        visible, visible_source = on_node, on_node_source
    if visible == 0:
        return [], f"{visible_source}: none"
    if tasks == 1:
        if visible is None:
            return [], f"{tasks_source}; GPU count unknown"
        return list(range(visible)), f"{tasks_source}, {visible_source}"
    if visible is not None and on_node is not None and visible < on_node:
        # The launcher bound this task to its own GPUs (--gpus-per-task, --gpu-bind).
        return list(range(visible)), f"bound to {visible} of the node's {on_node}: {visible_source}"
    if visible == 1:
        return [0], visible_source
    if tasks is None or visible is None:
        if visible is not None and local_rank >= visible:
            raise ValueError(f"local rank {local_rank} has no GPU of its own: {visible_source}; "
                             f"launch one process per GPU or one per node")
        unknown = tasks_source if tasks is None else "GPU count unknown"
        return [local_rank], (f"{unknown}: the safe choice, one GPU per process, as JAX does; "
                              f"launch one process per node or one per GPU to be sure")
    if local_rank >= tasks or visible % tasks:
        per_node = "--ntasks-per-node" if scheduler == "Slurm" else "--npernode"
        raise ValueError(
            f"{scheduler} runs {tasks} processes on this node ({tasks_source}) and each sees "
            f"{visible} GPUs ({visible_source}); local rank {local_rank} cannot take an equal "
            f"share: launch one process per node ({per_node} 1: it drives all the GPUs) "
            f"or one per GPU ({per_node} {visible})")
    share = visible // tasks
    return (list(range(local_rank * share, (local_rank + 1) * share)),
            f"{tasks_source}, {visible_source}: {share} per process")


def _visible_gpus(env: Mapping[str, str]) -> tuple[int | None, str]:
    for name in _VISIBLE_DEVICES:
        value = env.get(name)
        if value is not None and value.strip() != "NoDevFiles":  # Slurm's "no device files"
            return len([d for d in value.split(",") if d.strip()]), f"{name}={value}"
    return None, ""


def _slurm_gpus_on_node(env: Mapping[str, str]) -> tuple[int | None, str]:
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"]), f"SLURM_GPUS_ON_NODE={env['SLURM_GPUS_ON_NODE']}"
    value = env.get("SLURM_GPUS_PER_NODE", "")  # "8", "h100:8" or "a100:4,v100:2"
    counts = [item.rpartition(":")[2] for item in value.split(",")] if value else []
    if counts and all(count.isdigit() for count in counts):
        return sum(map(int, counts)), f"SLURM_GPUS_PER_NODE={value}"
    return None, ""


def _tpu_hosts(env: Mapping[str, str]) -> int | None:
    hosts = next((env[name] for name in _TPU if env.get(name)), None)
    if hosts is None:
        return None
    slices = env.get("MEGASCALE_NUM_SLICES", "1")
    return len(hosts.split(",")) * (int(slices) if slices.isdigit() else 1)


def _tpu_plan(env: Mapping[str, str]) -> Plan:
    hosts = _tpu_hosts(env)
    worker = env.get("TPU_WORKER_ID", "")
    return Plan("Cloud TPU", hosts, int(worker) if worker.isdigit() else None, None,
                f"Cloud TPU: {hosts} processes; JAX picks the coordinator and every local chip")


def _integer(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a whole number") from None


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 3] -> "0-3", [5] -> "5"."""
    if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 1:
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def _say(plan: Plan) -> None:
    if plan.process_id in (0, None) and plan.scheduler is not None:
        _log.info(plan.note)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300,
               env: Mapping[str, str] = os.environ) -> Plan:
    """Joins the processes of one run and returns the plan it followed.

    With `coordinator`, `num_processes` and `process_id` (localhost CPU runs, hand-made clusters)
    they are used as given; without them, on Cloud TPU, Slurm and Open MPI, JAX finds them.
    Under Slurm and Open MPI the local devices are `plan_from_environment`'s, in both forms.
    On CPU the collectives go over gloo.
    """
    plan = plan_from_environment(env)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
    devices = {} if plan.local_device_ids is None else {"local_device_ids": plan.local_device_ids}
    if coordinator is None:
        _check_jax_can_detect(env, plan)
        _say(plan)
        jax.distributed.initialize(initialization_timeout=timeout_s, **devices)
        return plan
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
        _log.info(f"process 0: coordinating {num_processes} processes at {coordinator} "
                  f"(waiting up to {timeout_s} s for them)")
        _say(plan._replace(process_id=0))
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s,
                               **devices)
    return plan


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
