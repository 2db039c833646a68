"""Which processes join a run and which local devices each drives, read from simulated Slurm,
Open MPI and Cloud TPU environments; `jax.distributed.initialize` is captured, never run."""
import logging

import jax
import pytest
from jax._src import clusters

from train import distributed

EIGHT = list(range(8))
CUDA_8 = "0,1,2,3,4,5,6,7"


def slurm(ntasks, procid=0, localid=0, **variables):
    """What srun puts in every task's environment, plus `variables`."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[001-004]",
            "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(localid), **variables}


def open_mpi(size, rank=0, local_rank=0, local_size=None, **variables):
    env = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
           "OMPI_COMM_WORLD_SIZE": str(size), "OMPI_COMM_WORLD_RANK": str(rank),
           "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank), **variables}
    if local_size is not None:
        env["OMPI_COMM_WORLD_LOCAL_SIZE"] = str(local_size)
    return env


# (case, environment, scheduler, number of processes, local_device_ids passed to JAX)
PLANS = [
    ("slurm: 1 task per node, 8 GPUs",
     slurm(4, procid=2, SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES=CUDA_8,
           SLURM_GPUS_ON_NODE="8"), "Slurm", 4, EIGHT),
    ("slurm: 1 task per node, count from SLURM_GPUS_PER_NODE",
     slurm(4, SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_PER_NODE="h100:8"), "Slurm", 4, EIGHT),
    ("slurm: 1 task per node, GPUs named by UUID",
     slurm(2, SLURM_TASKS_PER_NODE="1(x2)",
           CUDA_VISIBLE_DEVICES=",".join(f"GPU-{i:04x}" for i in range(8))), "Slurm", 2, EIGHT),
    ("slurm: 1 task per node, half a shared node (ids index the visible GPUs)",
     slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES="4,5,6,7",
           SLURM_GPUS_ON_NODE="4"), "Slurm", 4, [0, 1, 2, 3]),
    ("slurm: the step's 1 per node wins over the job's 8",
     slurm(4, SLURM_NTASKS_PER_NODE="8", SLURM_TASKS_PER_NODE="8(x4)",
           SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES=CUDA_8), "Slurm", 4, EIGHT),
    ("slurm: no per-node variable, as many tasks as nodes",
     slurm(4, SLURM_STEP_NUM_NODES="4", CUDA_VISIBLE_DEVICES=CUDA_8), "Slurm", 4, EIGHT),
    ("slurm: one task per GPU, each sees all 8",
     slurm(32, procid=13, localid=5, SLURM_STEP_TASKS_PER_NODE="8(x4)",
           CUDA_VISIBLE_DEVICES=CUDA_8, SLURM_GPUS_ON_NODE="8"), "Slurm", 32, [5]),
    ("slurm: one task per GPU, each bound to its own (--gpus-per-task 1)",
     slurm(32, procid=13, localid=5, SLURM_STEP_TASKS_PER_NODE="8(x4)",
           CUDA_VISIBLE_DEVICES="5", SLURM_GPUS_ON_NODE="8"), "Slurm", 32, [0]),
    ("slurm: 2 tasks per node share 8 GPUs",
     slurm(8, procid=3, localid=1, SLURM_STEP_TASKS_PER_NODE="2(x4)",
           CUDA_VISIBLE_DEVICES=CUDA_8), "Slurm", 8, [4, 5, 6, 7]),
    ("slurm: 2 tasks per node, each bound to 4",
     slurm(8, procid=3, localid=1, SLURM_STEP_TASKS_PER_NODE="2(x4)",
           CUDA_VISIBLE_DEVICES="4,5,6,7", SLURM_GPUS_ON_NODE="8"), "Slurm", 8, [0, 1, 2, 3]),
    ("slurm: single task",
     slurm(1, SLURM_STEP_TASKS_PER_NODE="1", CUDA_VISIBLE_DEVICES="0,1"), "Slurm", 1, [0, 1]),
    ("slurm: tasks per node unknown, one GPU per process",
     slurm(8, procid=3, localid=3, SLURM_NNODES="2", CUDA_VISIBLE_DEVICES="0,1,2,3"),
     "Slurm", 8, [3]),
    ("slurm: nodes run different task counts, one GPU per process",
     slurm(28, procid=26, localid=2, SLURM_STEP_TASKS_PER_NODE="8(x3),4",
           CUDA_VISIBLE_DEVICES=CUDA_8), "Slurm", 28, [2]),
    ("slurm: 1 task per node, GPU count unknown: all it sees",
     slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)"), "Slurm", 4, []),
    ("slurm: no GPUs visible",
     slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES=""), "Slurm", 4, []),
    ("slurm: JAX_LOCAL_DEVICE_IDS is the user's choice",
     slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES=CUDA_8,
           JAX_LOCAL_DEVICE_IDS="0,1"), "Slurm", 4, None),
    ("open mpi: 1 rank per node, 8 GPUs",
     open_mpi(4, rank=1, local_size=1, CUDA_VISIBLE_DEVICES=CUDA_8), "Open MPI", 4, EIGHT),
    ("open mpi: 1 rank per GPU",
     open_mpi(16, rank=11, local_rank=3, local_size=8, CUDA_VISIBLE_DEVICES=CUDA_8),
     "Open MPI", 16, [3]),
    ("open mpi inside a Slurm allocation: mpirun's ranks count",
     {**slurm(2, SLURM_TASKS_PER_NODE="1(x2)"),
      **open_mpi(16, local_rank=3, local_size=8, CUDA_VISIBLE_DEVICES=CUDA_8)},
     "Open MPI", 16, [3]),
    ("cloud tpu: JAX chooses", {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3", "TPU_WORKER_ID": "2"},
     "Cloud TPU", 4, None),
    ("no scheduler", {"CUDA_VISIBLE_DEVICES": CUDA_8, "HOME": "/root"}, None, None, None),
]


@pytest.mark.parametrize("case, env, scheduler, num_processes, local_device_ids", PLANS,
                         ids=[case[0] for case in PLANS])
def test_plan_from_environment(case, env, scheduler, num_processes, local_device_ids):
    plan = distributed.plan_from_environment(env)
    assert (plan.scheduler, plan.num_processes, plan.local_device_ids) == (
        scheduler, num_processes, local_device_ids)
    assert "\n" not in plan.note and plan.note


def test_the_note_names_the_choice_and_its_source():
    plan = distributed.plan_from_environment(
        slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES=CUDA_8))
    assert "GPUs 0-7" in plan.note and "CUDA_VISIBLE_DEVICES" in plan.note
    unsure = distributed.plan_from_environment(slurm(8, localid=3, CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert "safe" in unsure.note and "one process per node or one per GPU" in unsure.note
    garbled = distributed.plan_from_environment(
        slurm(4, localid=2, SLURM_STEP_TASKS_PER_NODE="one", CUDA_VISIBLE_DEVICES=CUDA_8))
    assert garbled.local_device_ids == [2] and "SLURM_STEP_TASKS_PER_NODE=one" in garbled.note


@pytest.mark.parametrize("env, says", [
    (slurm(12, localid=1, SLURM_STEP_TASKS_PER_NODE="3(x4)", CUDA_VISIBLE_DEVICES=CUDA_8),
     "--ntasks-per-node 8"),
    (open_mpi(12, local_rank=1, local_size=3, CUDA_VISIBLE_DEVICES=CUDA_8), "--npernode 1"),
    (slurm(12, localid=3, SLURM_NNODES="2", CUDA_VISIBLE_DEVICES="0,1"), "no GPU of its own"),
    (slurm("four"), "SLURM_NTASKS='four' is not a whole number"),
], ids=["3 tasks cannot share 8 GPUs", "3 ranks cannot share 8 GPUs", "local rank beyond the GPUs", "bad task count"])
def test_launches_that_cannot_work_name_the_fix(env, says):
    with pytest.raises(ValueError, match=says):
        distributed.plan_from_environment(env)


@pytest.mark.parametrize("env, size", [
    (slurm(4), ("Slurm", 4)),
    (slurm(1), None),
    (open_mpi(16), ("Open MPI", 16)),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1", "MEGASCALE_NUM_SLICES": "2"}, ("Cloud TPU", 4)),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({}, None),
])
def test_cluster_size_from_environment(env, size):
    assert distributed.cluster_size_from_environment(env) == size


@pytest.fixture
def captured(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # keep gloo out of this process
    return calls


def test_initialize_passes_the_planned_devices(captured, caplog):
    caplog.set_level(logging.INFO, "train.distributed")
    env = slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES=CUDA_8)
    plan = distributed.initialize(timeout_s=30, env=env)
    assert captured == [{"initialization_timeout": 30, "local_device_ids": EIGHT}]
    assert plan.local_device_ids == EIGHT
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "GPUs 0-7" in said[0]
    caplog.clear()

    distributed.initialize(env={**env, "SLURM_PROCID": "3"})  # only process 0 says it
    assert captured[-1]["local_device_ids"] == EIGHT and caplog.records == []


def test_initialize_leaves_tpu_and_user_choices_to_jax(captured):
    distributed.initialize(env={"TPU_WORKER_HOSTNAMES": "t0,t1", "TPU_WORKER_ID": "0"})
    distributed.initialize(env=slurm(4, SLURM_STEP_TASKS_PER_NODE="1(x4)",
                                     JAX_LOCAL_DEVICE_IDS="0,1"))
    assert [sorted(call) for call in captured] == [["initialization_timeout"]] * 2


def test_initialize_with_a_coordinator_keeps_the_planned_devices(captured):
    env = slurm(32, procid=0, localid=5, SLURM_STEP_TASKS_PER_NODE="8(x4)",
                CUDA_VISIBLE_DEVICES="5", SLURM_GPUS_ON_NODE="8")
    distributed.initialize("10.0.0.1:1234", 2, 0, timeout_s=30, env=env)
    assert captured == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                         "process_id": 0, "initialization_timeout": 30,
                         "local_device_ids": [0]}]
    distributed.initialize("10.0.0.1:1234", 2, 0, env={})
    assert "local_device_ids" not in captured[-1]


@pytest.mark.parametrize("env, says", [
    ({k: v for k, v in slurm(4).items() if k != "SLURM_STEP_NODELIST"}, "srun"),
    ({k: v for k, v in open_mpi(4).items() if k != "OMPI_MCA_orte_hnp_uri"},
     "--coordinator HOST:PORT --num-processes 4 --process-id \\$OMPI_COMM_WORLD_RANK"),
], ids=["slurm without srun", "open mpi 5"])
def test_initialize_refuses_launchers_jax_cannot_detect(captured, env, says):
    with pytest.raises(ValueError, match=says):
        distributed.initialize(env=env)
    assert captured == []


def test_jax_keeps_the_devices_descent_passes(monkeypatch):
    """The premise: JAX's own Slurm detection gives each process [SLURM_LOCALID] when it is
    given nothing, and keeps a list it is given (an empty one too: it then restricts nothing)."""
    for name in ("OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                 "JAX_COORDINATOR_PORT"):
        monkeypatch.delenv(name, raising=False)
    env = slurm(4, procid=0, localid=0, SLURM_STEP_TASKS_PER_NODE="1(x4)",
                CUDA_VISIBLE_DEVICES=CUDA_8)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    detect = clusters.ClusterEnv.auto_detect_unset_distributed_params
    assert detect(None, None, None, None, None, 30)[1:] == (4, 0, [0])
    planned = distributed.plan_from_environment(env).local_device_ids
    assert detect(None, None, None, planned, None, 30)[1:] == (4, 0, EIGHT)
    assert detect(None, None, None, [], None, 30)[3] == []
