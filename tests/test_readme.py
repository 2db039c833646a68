"""The README's commands, run as written (or as the table below says and why), and the output
lines it quotes, matched against what the commands print."""
import concurrent.futures
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, xla_flags

README = os.path.join(ROOT, "README.md")
BIN = os.path.dirname(sys.executable)

OWN = ("the reader's own files; tests/test_own_data.py trains, evaluates and predicts the same "
       "way on an .npz, a folder of PNGs and CSV tables it writes")

# Every `descent ...` command in the README's sh blocks, in order (comments stripped). Each one
# is run as written, with `runs/` inside a temporary folder and one CPU device as on a user's
# machine, unless it is changed ("as": a variant the README names, e.g. :tiny for a 12-minute
# run) or skipped ("skip": why, and which test covers it). "quote": the line the README says it
# ends with: it must be in the README and be the command's last line.
COMMANDS = {
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/descent train --config "
    "experiments/configs/digits_mlp.py --workdir runs/digits_mlp": {
        "as": "descent train --config experiments/configs/digits_mlp.py --workdir "
              "runs/digits_mlp",  # the venv and install are CI's own first step
        "quote": "best checkpoint: step 663; test accuracy 0.9778 (360 examples), loss 0.1707"},
    "descent train --config experiments/configs/digits_cnn.py --workdir runs/cnn "
    "--config.optimizer.name=sgd --config.optimizer.learning_rate=0.05 --config.epochs=10": {},
    "descent train --config experiments/configs/digits_mlp.py:tiny --workdir runs/quick": {},
    "descent eval --workdir runs/digits_mlp": {},
    "descent eval --workdir runs/digits_mlp --checkpoint latest --split validation": {},
    "descent eval --workdir runs/digits_mlp --checkpoint 663": {},
    "descent train --config experiments/configs/function_mlp.py --workdir runs/function": {
        "quote": "best checkpoint: step 2100; test mse 0.0004907, mae 0.009579 (400 examples)"},
    "descent train --config experiments/configs/digits_mlp.py:tiny --workdir runs/profiled "
    "--config.profile.start_step=10 --config.profile.num_steps=5": {},
    "descent train --config experiments/configs/digits_mlp.py --workdir runs/accumulated "
    "--config.dataset.batch_size=128 --config.optimizer.accumulate_steps=4": {},
    "descent train --config experiments/configs/digits_mlp.py --workdir runs/ema "
    "--config.optimizer.ema_decay=0.99 --config.early_stopping.monitor=eval_ema_accuracy": {
        "quote": "best checkpoint: step 1560; test accuracy 0.9833 (360 examples), loss "
                 "0.1716 (moving average of the weights)"},
    "descent eval --workdir runs/ema --weights raw": {},
    "descent train --config experiments/configs/digits_mlp.py --workdir runs/seeds --seeds 0-4": {
        "as": "descent train --config experiments/configs/digits_mlp.py:tiny --workdir "
              "runs/seeds --seeds 0-4"},  # 5 full runs are a minute; tests/test_many.py too
    "descent train --config experiments/configs/digits_mlp.py --workdir runs/lr --sweep "
    "optimizer.learning_rate=0.0003,0.001,0.003": {
        "as": "descent train --config experiments/configs/digits_mlp.py:tiny --workdir runs/lr "
              "--sweep optimizer.learning_rate=0.0003,0.001,0.003"},
    "descent eval --workdir runs/seeds/seed_3": {},
    "descent study list": {},
    "descent study activations --quick": {
        "skip": "tests/test_study_activations.py runs this study at --quick size"},
    "descent study activations": {"skip": "minutes; its quick form is tested"},
    "descent study all --out experiments/studies/gallery": {
        "skip": "half an hour; it regenerates the committed gallery"},
    "descent train --config experiments/configs/shakespeare_lstm.py:cpu --workdir runs/lstm": {
        "as": "descent train --config experiments/configs/shakespeare_lstm.py:tiny --workdir "
              "runs/lstm", "data": "flag"},  # :cpu is 12 minutes
    'descent sample --workdir runs/lstm --prompt "ROMEO:" --length 500 --temperature 0.8': {
        "data": "needs"},
    "descent data prepare mnist --manual-dir /data/mnist-raw": {
        "skip": "/data is a placeholder; the `prepared` fixture runs this with ../shared/data"},
    "descent data prepare fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist": {
        "skip": "needs Debian's package installed; tests/test_prepare.py prepares its files"},
    "descent data prepare cifar10 --manual-dir /data/cifar": {
        "skip": "/data is a placeholder; tests/test_prepare.py prepares a CIFAR-format archive"},
    "descent data prepare imagenet2012 --manual-dir /data/imagenet": {
        "skip": "/data is a placeholder; tests/test_prepare.py prepares ImageNet-format tars"},
    "descent data prepare tiny_shakespeare --manual-dir /data/shakespeare": {
        "skip": "/data is a placeholder; the `prepared` fixture runs this with ../shared/data"},
    "descent train --config experiments/configs/digits_cnn.py --workdir runs/mine "
    "--config.dataset.name=arrays --config.dataset.path=mnist.npz": {"skip": OWN},
    "descent train --config experiments/configs/digits_cnn.py --workdir runs/pets "
    "--config.dataset.name=image_folder --config.dataset.path=photos "
    "--config.dataset.image_size=64": {"skip": OWN},
    "descent train --config experiments/configs/digits_mlp.py --workdir runs/iris "
    "--config.dataset.name=csv --config.dataset.path=iris.csv "
    "--config.dataset.target=species": {"skip": OWN},
    "descent train --config experiments/configs/diabetes_mlp.py --workdir runs/houses "
    "--config.dataset.name=csv --config.dataset.path=houses.csv "
    "--config.dataset.target=price": {"skip": OWN},
    "descent predict --workdir runs/pets photos/unsorted --top-k 3": {"skip": OWN},
    "descent predict --workdir runs/iris new_flowers.csv": {"skip": OWN},
    "descent eval --workdir runs/cnn": {},
    "descent eval --workdir runs/cnn --checkpoint latest --split validation": {},
    'gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command "cd descent && '
    '.venv/bin/descent train --distributed --config experiments/configs/digits_cnn.py '
    '--workdir /mnt/bucket/run"': {"skip": "needs a Cloud TPU pod slice"},
    "srun --nodes 4 --ntasks-per-node 1 --gpus-per-node 8 .venv/bin/descent train --config "
    "experiments/configs/digits_cnn.py --workdir /shared/runs/cnn": {
        "skip": "needs a Slurm cluster; tests/test_distributed_env.py simulates its variables"},
    "srun --nodes 4 --ntasks-per-node 8 --gpus-per-node 8 .venv/bin/descent train --config "
    "experiments/configs/digits_cnn.py --workdir /shared/runs/cnn": {
        "skip": "needs a Slurm cluster; tests/test_distributed_env.py simulates its variables"},
    "mpirun -np 4 --npernode 1 .venv/bin/descent train --config ... --workdir ...": {
        "skip": "needs an Open MPI cluster; tests/test_distributed_env.py simulates its variables"},
    "descent train --coordinator 10.0.0.1:1234 --num-processes 4 --process-id $RANK --config "
    "... --workdir ...": {"skip": "a template for other clusters"},
    "descent launch-local --num-processes 2 --devices-per-process 4 -- train --config "
    "experiments/configs/digits_cnn.py:tiny --workdir runs/two_processes": {
        "skip": "tests/test_parallel.py runs launch-local with 2 processes of 4 devices"},
}


def readme_commands() -> list[str]:
    """The `descent` command lines of the README's sh blocks, continuations joined."""
    text = open(README).read()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("#")[0].split()) if "descent" in line else ""
            if line:
                commands.append(line)
    return commands


def test_every_readme_command_is_in_the_table_and_every_quote_in_the_readme():
    assert readme_commands() == list(COMMANDS)  # a new or changed command is classified here
    text = " ".join(open(README).read().split())
    for spec in COMMANDS.values():
        if "quote" in spec:
            assert f"`{spec['quote']}`" in text


def chains(commands: list[str]) -> list[list[str]]:
    """The commands grouped by the run folder they name (`runs/NAME...`), in README order: a
    chain's commands depend on each other (train, then eval), different chains never do."""
    by_run = {}
    for command in commands:
        named = re.search(r"runs/([^/\s]+)", command)
        by_run.setdefault(named.group(1) if named else command, []).append(command)
    return list(by_run.values())


def test_commands_of_one_run_folder_form_one_chain_in_readme_order():
    grouped = chains(["descent train --workdir runs/a", "descent study list",
                      "descent train --workdir runs/b", "descent eval --workdir runs/a/seed_3",
                      "descent eval --workdir runs/a --checkpoint 5"])
    assert grouped == [["descent train --workdir runs/a", "descent eval --workdir runs/a/seed_3",
                        "descent eval --workdir runs/a --checkpoint 5"],
                       ["descent study list"], ["descent train --workdir runs/b"]]


def test_the_readme_commands_run_and_print_what_it_quotes(tmp_path, request):
    env = {**os.environ, "XLA_FLAGS": xla_flags(),
           "PATH": BIN + os.pathsep + os.environ["PATH"]}
    no_data = ""
    try:
        data_dir = request.getfixturevalue("prepared")
    except pytest.skip.Exception as e:
        data_dir, no_data = None, str(e)
    runnable = []
    for command, spec in COMMANDS.items():
        if "skip" in spec or (spec.get("data") and data_dir is None):
            print(f"not run: {command}: {spec.get('skip', no_data)}")
        else:
            runnable.append(command)

    def run(command: str):
        spec = COMMANDS[command]
        argv = shlex.split(spec.get("as", command))
        argv = [a.replace("runs/", str(tmp_path / "runs") + "/") for a in argv]
        if spec.get("data") == "flag":
            argv.append(f"--config.dataset.data_dir={data_dir}")
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=300)

    def run_chain(chain: list[str]) -> list:
        results = []
        for command in chain:
            results.append((command, run(command)))
            if results[-1][1].returncode:
                break  # what follows reads this run's folder
        return results

    # two chains at a time: most of a command's time is its start, which uses one core
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = [r for results in pool.map(run_chain, chains(runnable)) for r in results]
    for command, result in done:
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        if "quote" in COMMANDS[command]:
            quote = COMMANDS[command]["quote"]
            assert result.stdout.strip().splitlines()[-1] == quote, command
