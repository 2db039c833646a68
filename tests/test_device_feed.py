"""In-memory data kept on the devices: each step reads its batch there, and it must be exactly
the batch the host pipeline would have sent (same rows, same augmentation, same normalisation),
so a run trains to the same numbers either way and resumes exactly."""
import json
import os

import jax
import numpy as np
import pytest

import data
from data.images import CROP_FLIP
from experiments import run
from train import sharding
from train.trainer import Trainer

from helpers import cifar_shaped, tiny_config


@pytest.mark.parametrize("make", [cifar_shaped, lambda: data.load("digits")],
                         ids=["augmented_uint8", "digits"])
def test_a_batch_read_on_the_devices_equals_the_host_pipelines(make):
    dataset = make()
    mesh = sharding.make_mesh("data=-1")  # 8 devices: each reads its rows
    arrays = jax.device_put(dataset.device_arrays("train"), sharding.replicated(mesh))
    read = jax.jit(dataset.device_batch, out_shardings=sharding.batch_sharding(mesh))
    for epoch in (0, 3):
        host = list(dataset.train_batches(32, seed=5, epoch=epoch))
        plans = list(dataset.train_plans(32, seed=5, epoch=epoch))
        assert len(host) == len(plans) > 1
        for h, plan in zip(host, plans):
            on_device = read(arrays, plan)
            for key in ("inputs", "targets"):
                assert on_device[key].dtype == h[key].dtype
                np.testing.assert_array_equal(np.asarray(on_device[key]), h[key])
    # from the middle of an epoch too, as a resumed run starts
    late = list(dataset.train_plans(32, seed=5, epoch=1, start=2))
    np.testing.assert_array_equal(
        np.asarray(read(arrays, late[0])["inputs"]),
        list(dataset.train_batches(32, seed=5, epoch=1, start=2))[0]["inputs"])


def test_the_crop_flip_really_crops_and_mirrors():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    draws = {"dy": np.array([4, 2], np.int32), "dx": np.array([4, 0], np.int32),
             "flip": np.array([False, True])}
    out = CROP_FLIP.apply({"inputs": images}, draws, np, pad=2)["inputs"]
    np.testing.assert_array_equal(out[0, :2, :2, 0], images[0, 2:, 2:, 0])  # shifted 2, 2
    assert (out[0, 2:] == 0).all() and (out[0, :, 2:] == 0).all()        # into the padding
    # image 1: no vertical shift; shifted 2 left into the padding, then mirrored
    np.testing.assert_array_equal(out[1, :, :, 0], np.pad(images[1, :, :, 0],
                                                          ((0, 0), (2, 0)))[:, :4][:, ::-1])


def test_standardised_table_columns_read_on_the_devices_equal_the_hosts_to_rounding(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "table.csv"
    rows = ["a,b,c,label"] + [f"{x:.3f},{y:.3f},{z:.1f},{'yes' if x > 0 else 'no'}"
                              for x, y, z in rng.normal(size=(120, 3)) * (1, 50, 900)]
    path.write_text("\n".join(rows) + "\n")
    dataset = data.load("csv", path=str(path))
    arrays = jax.device_put(dataset.device_arrays("train"))
    for h, plan in zip(dataset.train_batches(16, seed=0, epoch=0),
                       dataset.train_plans(16, seed=0, epoch=0)):
        on_device = jax.jit(dataset.device_batch)(arrays, plan)
        np.testing.assert_array_equal(np.asarray(on_device["targets"]), h["targets"])
        # the same rows; XLA fuses (x - mean) / std and may round the last bit differently
        np.testing.assert_allclose(np.asarray(on_device["inputs"]), h["inputs"], rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("mesh,strategy", [("data=1", "dp"), ("data=8", "dp"),
                                           ("data=8", "pmap")])
def test_training_on_the_device_equals_training_from_the_host(mesh, strategy, tmp_path):
    results = {}
    for on_device in (True, False):
        config = tiny_config("digits_mlp.py", **{"dataset.on_device": on_device,
                                                 "parallel.mesh": mesh,
                                                 "parallel.strategy": strategy})
        workdir = str(tmp_path / str(on_device))
        results[on_device] = run.train_and_evaluate(config, workdir, console=False)
        results[on_device]["records"] = [json.loads(line) for line in open(
            os.path.join(workdir, "metrics.jsonl"))]
    fed, sent = results[True], results[False]
    for a, b in zip(jax.tree.leaves(fed["state"].params), jax.tree.leaves(sent["state"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    losses = [[r["train_loss"] for r in rs["records"] if "train_loss" in r] for rs in (fed, sent)]
    assert len(losses[0]) > 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    assert fed["test"]["accuracy"] == sent["test"]["accuracy"]


def test_datasets_that_are_not_in_memory_get_their_batches_from_the_host():
    config = tiny_config("digits_mlp.py")
    model, dataset = run.build(config)
    trainer = Trainer(config, model, dataset)
    assert trainer.device_feed(dataset) is not None

    class Streamed:  # a user's dataset with only the protocol's host batches
        pass
    assert trainer.device_feed(Streamed()) is None
