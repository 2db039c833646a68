"""How long saving a replicated ResNet-50 blocks training: orbax's standard handler, which copies
every replicated array out of all its devices a slice each, against descent's, which copies an
array out of one device when its slice per device would be under 1 MiB.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m experiments.benchmarks.replicated_save [--repeats 9]

The state is ResNet-50's parameters and batch statistics (nets.build, 25.6M values in 267
arrays), replicated over every device as data parallelism holds them. The two handlers save in
turn, `--repeats` times each; each save is timed until orbax returns (what a training loop
waits for), then finished before the next. Medians, min-max and their ratio.
"""
import argparse
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import nets
from train import checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print(f"replicated_save: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.ERROR)
    model = nets.build("resnet50", input_shape=(224, 224, 3), num_classes=1000)
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    state = jax.device_put(nnx.to_pure_dict(nnx.state(model)), replicated)
    leaves = jax.tree.leaves(state)
    handlers = {"orbax standard": (ocp.StandardCheckpointHandler(), ocp.args.StandardSave),
                "descent": (checkpoint.state_handler(), ocp.args.PyTreeSave)}
    times = {name: [] for name in handlers}
    with tempfile.TemporaryDirectory() as root:
        managers = {name: ocp.CheckpointManager(
            f"{root}/{i}", options=ocp.CheckpointManagerOptions(max_to_keep=1),
            item_handlers={"state": handler}) for i, (name, (handler, _)) in
            enumerate(handlers.items())}
        for step in range(args.repeats + 1):  # the first round compiles orbax's slices: unkept
            for name, manager in managers.items() if step % 2 else reversed(managers.items()):
                start = time.perf_counter()
                manager.save(step, args=ocp.args.Composite(state=handlers[name][1](state)))
                if step:
                    times[name].append(time.perf_counter() - start)
                manager.wait_until_finished()
        for manager in managers.values():
            manager.close()
    print(f"ResNet-50: {sum(x.size for x in leaves) / 1e6:.1f}M values in {len(leaves)} arrays, "
          f"replicated over {jax.device_count()} {jax.devices()[0].platform} devices; "
          f"{args.repeats} saves each, alternating")
    print("| handler | training blocked per save, median | min-max |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {statistics.median(seconds) * 1e3:.0f} ms | "
              f"{min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f} ms |")
    ratio = statistics.median(times["orbax standard"]) / statistics.median(times["descent"])
    print(f"orbax standard / descent: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
