"""The commands of the README and of every page in docs/, run as written (or as the table below
says and why), and the output lines they quote, matched against what the commands print."""
import concurrent.futures
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, xla_flags

BIN = os.path.dirname(sys.executable)

OWN = ("the reader's own files; tests/test_own_data.py trains, evaluates and predicts the same "
       "way on an .npz, a folder of PNGs and CSV tables it writes")
BUCKET = ("needs a Google Cloud Storage bucket; tests/test_buckets.py trains, kills, resumes, "
          "evaluates and predicts in one that a GCS emulator serves")
CLUSTER = "needs a {} cluster; tests/test_distributed_env.py simulates its variables"
WEIGHTS = ("needs {} of the reader's; tests/test_weights.py imports those transformers and "
           "torchvision write, fine-tunes and exports them")

# Every `descent ...` command in the sh blocks of each page, in order (comments stripped), the
# README first. Each one is run as written, with `runs/` inside one temporary folder shared by
# all pages (docs/checkpoints.md evaluates the README's runs/cnn) and one CPU device as on a
# user's machine, unless it is changed ("as": a variant the page names, e.g. :tiny for a
# 12-minute run) or skipped ("skip": why, and which test covers it). A command written on two
# pages runs once. "quote": the line the page says it ends with: it must be on that page and be
# the command's last line. "data": it reads the prepared real datasets ("flag": pass their
# folder), and is not run where they are not.
COMMANDS = {
    "README.md": {
        "descent train --config experiments/configs/digits_mlp.py --workdir runs/digits_mlp": {
            "quote": "best checkpoint: step 663; test accuracy 0.9778 (360 examples), "
                     "loss 0.1707"},
        "descent train --config experiments/configs/digits_cnn.py --workdir runs/cnn "
        "--config.optimizer.name=sgd --config.optimizer.learning_rate=0.05 "
        "--config.epochs=10": {},
        "descent train --config experiments/configs/digits_mlp.py:tiny --workdir runs/quick": {},
        "descent eval --workdir runs/digits_mlp": {},
        "descent eval --workdir runs/digits_mlp --checkpoint latest --split validation": {},
        "descent eval --workdir runs/digits_mlp --checkpoint 663": {},
        "descent study list": {},
    },
    "docs/checkpoints.md": {
        "descent train --config experiments/configs/digits_mlp.py --workdir "
        "gs://my-bucket/runs/mlp": {"skip": BUCKET},
        "descent eval --workdir gs://my-bucket/runs/mlp": {"skip": BUCKET},
        "descent eval --workdir runs/cnn": {},
        "descent eval --workdir runs/cnn --checkpoint latest --split validation": {},
        # names runs/quick first, so it runs in the README's runs/quick chain, after it
        "descent train --config experiments/configs/digits_mlp.py:tiny "
        "--config.init_from=runs/quick --workdir runs/tuned "
        "--config.optimizer.freeze='hidden/*'": {},
        "descent import hf-gpt2 gpt2 --workdir runs/gpt2": {
            "skip": WEIGHTS.format("a GPT-2 folder")},
        "descent import torchvision-resnet resnet18.pth --workdir runs/resnet18": {
            "skip": WEIGHTS.format("a ResNet-18 file")},
        "descent export runs/resnet18 --out resnet18-exported": {
            "skip": "exports the import above; tests/test_weights.py exports imported GPT-2 and "
                    "ResNet-18 runs and loads them in transformers and torchvision"},
    },
    "docs/configs-and-cli.md": {
        "descent train --config experiments/configs/digits_cnn.py --workdir runs/cnn "
        "--config.optimizer.name=sgd --config.optimizer.learning_rate=0.05 "
        "--config.epochs=10": {},
        "descent train --config experiments/configs/digits_mlp.py:tiny --workdir runs/he "
        "--config.model.init=he": {},
        "descent config show experiments/configs/digits_mlp.py --config.model.name=cnn": {},
    },
    "docs/data.md": {
        "descent data prepare mnist --manual-dir /data/mnist-raw": {
            "skip": "/data is a placeholder; the `prepared` fixture runs this with "
                    "../shared/data"},
        "descent data prepare fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist": {
            "skip": "needs Debian's package installed; tests/test_prepare.py prepares its files"},
        "descent data prepare cifar10 --manual-dir /data/cifar": {
            "skip": "/data is a placeholder; tests/test_prepare.py prepares a CIFAR-format "
                    "archive"},
        "descent data prepare imagenet2012 --manual-dir /data/imagenet": {
            "skip": "/data is a placeholder; tests/test_prepare.py prepares ImageNet-format tars"},
        "descent data prepare tiny_shakespeare --manual-dir /data/shakespeare": {
            "skip": "/data is a placeholder; the `prepared` fixture runs this with "
                    "../shared/data"},
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
        # input.txt is Tiny Shakespeare's; :cpu is minutes, :tiny seconds
        "descent data prepare text shakespeare --files input.txt --tokenizer bpe:2048 "
        "--data-dir runs/bpe": {
            "as": "descent data prepare text shakespeare --files "
                  "../shared/data/tiny_shakespeare/input.txt --tokenizer bpe:2048 "
                  "--data-dir runs/bpe", "data": "needs"},
        "descent train --config experiments/configs/shakespeare_gpt.py:cpu --workdir "
        "runs/bpe/gpt --config.dataset.name=tokens --config.dataset.path=runs/bpe/shakespeare": {
            "as": "descent train --config experiments/configs/shakespeare_gpt.py:tiny --workdir "
                  "runs/bpe/gpt --config.dataset.name=tokens "
                  "--config.dataset.path=runs/bpe/shakespeare", "data": "needs"},
        'descent sample --workdir runs/bpe/gpt --prompt "ROMEO:" --length 100': {
            "data": "needs"},
    },
    "docs/design.md": {},
    "docs/performance.md": {},
    "docs/scaling.md": {
        # runs/bpe is docs/data.md's corpus: these run after its chain has prepared it
        "descent plan --config experiments/configs/gpt2_finetune.py "
        "--config.dataset.path=runs/bpe/shakespeare --devices 1 --device-memory 16GB": {
            "data": "needs"},
        "descent plan --config experiments/configs/gpt2_finetune.py "
        "--config.dataset.path=runs/bpe/shakespeare --devices 8 --device-memory 16GB": {
            "data": "needs"},
        "descent plan --config experiments/configs/gpt2_finetune.py "
        "--config.dataset.path=runs/bpe/shakespeare --devices 8 "
        "--config.parallel.strategy=fsdp --device-memory 16GB": {"data": "needs"},
        'gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command "cd descent && '
        '.venv/bin/descent train --distributed --config experiments/configs/digits_cnn.py '
        '--workdir /mnt/bucket/run"': {"skip": "needs a Cloud TPU pod slice"},
        "srun --nodes 4 --ntasks-per-node 1 --gpus-per-node 8 .venv/bin/descent train --config "
        "experiments/configs/digits_cnn.py --workdir /shared/runs/cnn": {
            "skip": CLUSTER.format("Slurm")},
        "srun --nodes 4 --ntasks-per-node 8 --gpus-per-node 8 .venv/bin/descent train --config "
        "experiments/configs/digits_cnn.py --workdir /shared/runs/cnn": {
            "skip": CLUSTER.format("Slurm")},
        "mpirun -np 4 --npernode 1 .venv/bin/descent train --config ... --workdir ...": {
            "skip": CLUSTER.format("Open MPI")},
        "descent train --coordinator 10.0.0.1:1234 --num-processes 4 --process-id $RANK "
        "--config ... --workdir ...": {"skip": "a template for other clusters"},
        "descent launch-local --num-processes 2 --devices-per-process 4 -- train --config "
        "experiments/configs/digits_cnn.py:tiny --workdir runs/two_processes": {
            "skip": "tests/test_parallel.py runs launch-local with 2 processes of 4 devices"},
    },
    "docs/studies.md": {
        "descent study list": {},
        "descent study activations --quick": {
            "skip": "tests/test_study_activations.py runs this study at --quick size"},
        "descent study activations": {"skip": "minutes; its quick form is tested"},
        "descent study all --out experiments/studies/gallery": {
            "skip": "hours on 2 cores; it regenerates the committed gallery"},
    },
    "docs/training.md": {
        "WANDB_MODE=offline descent train --config experiments/configs/digits_mlp.py:tiny "
        "--workdir runs/tracked --config.log.trackers=wandb,mlflow": {},
        "descent train --config experiments/configs/function_mlp.py --workdir runs/function": {
            "quote": "best checkpoint: step 2100; test mse 0.0004907, mae 0.009579 "
                     "(400 examples)"},
        "descent train --config experiments/configs/digits_mlp.py:tiny --workdir runs/profiled "
        "--config.profile.start_step=10 --config.profile.num_steps=5": {},
        "descent train --config experiments/configs/digits_mlp.py --workdir runs/accumulated "
        "--config.dataset.batch_size=128 --config.optimizer.accumulate_steps=4": {},
        "descent train --config experiments/configs/digits_mlp.py --workdir runs/ema "
        "--config.optimizer.ema_decay=0.99 --config.early_stopping.monitor=eval_ema_accuracy": {
            "quote": "best checkpoint: step 1560; test accuracy 0.9833 (360 examples), loss "
                     "0.1716 (moving average of the weights)"},
        "descent eval --workdir runs/ema --weights raw": {},
        "descent train --config experiments/configs/digits_mlp.py --workdir runs/seeds "
        "--seeds 0-4": {
            "as": "descent train --config experiments/configs/digits_mlp.py:tiny --workdir "
                  "runs/seeds --seeds 0-4"},  # 5 full runs are a minute; tests/test_many.py too
        "descent train --config experiments/configs/digits_mlp.py --workdir runs/lr --sweep "
        "optimizer.learning_rate=0.0003,0.001,0.003": {
            "as": "descent train --config experiments/configs/digits_mlp.py:tiny --workdir "
                  "runs/lr --sweep optimizer.learning_rate=0.0003,0.001,0.003"},
        "descent eval --workdir runs/seeds/seed_3": {},
    },
    "docs/zoo.md": {
        "descent train --config experiments/configs/shakespeare_lstm.py:cpu --workdir "
        "runs/lstm": {
            "as": "descent train --config experiments/configs/shakespeare_lstm.py:tiny "
                  "--workdir runs/lstm", "data": "flag"},  # :cpu is 12 minutes
        'descent sample --workdir runs/lstm --prompt "ROMEO:" --length 500 '
        '--temperature 0.8': {"data": "needs"},
        'descent sample --workdir runs/lstm --prompt "ROMEO:" --prompt "JULIET:" --top-p 0.9 '
        '--stop "."': {"data": "needs"},
        "descent import hf-gpt2 gpt2 --workdir runs/gpt2": {
            "skip": WEIGHTS.format("a GPT-2 folder")},
        "descent data prepare text mytext --files my.txt --tokenizer gpt2:gpt2": {
            "skip": "needs GPT-2's tokenizer files and the reader's text; tests/test_weights.py "
                    "prepares text with an imported GPT-2's tokenizer and fine-tunes on it"},
        "descent train --config experiments/configs/gpt2_finetune.py --workdir runs/mytext "
        "--config.dataset.path=runs/data/mytext --config.init_from=runs/gpt2": {
            "skip": "hours on a CPU, and needs the two above; tests/test_weights.py fine-tunes "
                    "gpt2_finetune.py:tiny the same way"},
        'descent sample --workdir runs/mytext --prompt "Once upon a time"': {
            "skip": "samples the fine-tune above; tests/test_weights.py samples an imported "
                    "GPT-2"},
    },
}


def pages() -> list[str]:
    """The README, then every page of docs/, as paths relative to the repository."""
    docs = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return ["README.md"] + [os.path.relpath(p, ROOT) for p in docs]


def page_commands(page: str) -> list[str]:
    """The `descent` command lines of a page's sh blocks, continuations joined."""
    text = open(os.path.join(ROOT, page)).read()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("#")[0].split()) if "descent" in line else ""
            if line:
                commands.append(line)
    return commands


def test_every_page_command_is_in_the_table_and_every_quote_on_its_page():
    assert list(COMMANDS) == pages()  # a new page is listed here, in this order
    for page, table in COMMANDS.items():
        assert page_commands(page) == list(table), page  # a new or changed command too
        text = " ".join(open(os.path.join(ROOT, page)).read().split())
        for spec in table.values():
            if "quote" in spec:
                assert f"`{spec['quote']}`" in text, page


def test_the_readme_links_to_every_page_of_docs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for page in pages()[1:]:
        assert f"]({page})" in readme, page


def test_the_readme_is_short():
    assert len(open(os.path.join(ROOT, "README.md")).read().splitlines()) <= 300


def chains(commands: list[str]) -> list[list[str]]:
    """The commands grouped by the run folder they name (`runs/NAME...`), in page order: a
    chain's commands depend on each other (train, then eval), different chains never do."""
    by_run = {}
    for command in commands:
        named = re.search(r"runs/([^/\s]+)", command)
        by_run.setdefault(named.group(1) if named else command, []).append(command)
    return list(by_run.values())


def test_commands_of_one_run_folder_form_one_chain_in_page_order():
    grouped = chains(["descent train --workdir runs/a", "descent study list",
                      "descent train --workdir runs/b", "descent eval --workdir runs/a/seed_3",
                      "descent eval --workdir runs/a --checkpoint 5"])
    assert grouped == [["descent train --workdir runs/a", "descent eval --workdir runs/a/seed_3",
                        "descent eval --workdir runs/a --checkpoint 5"],
                       ["descent study list"], ["descent train --workdir runs/b"]]


def test_the_commands_run_and_print_what_their_pages_quote(tmp_path, request):
    env = {**os.environ, "XLA_FLAGS": xla_flags(),
           "PATH": BIN + os.pathsep + os.environ["PATH"],  # W&B's own files in the test's too
           **{f"WANDB_{k}_DIR": str(tmp_path / "wandb-home" / k) for k in ("CACHE", "CONFIG",
                                                                          "DATA")}}
    no_data = ""
    try:
        data_dir = request.getfixturevalue("prepared")
    except pytest.skip.Exception as e:
        data_dir, no_data = None, str(e)
    specs = {}  # command -> (page, spec); a command on two pages runs once, as first written
    for page, table in COMMANDS.items():
        for command, spec in table.items():
            specs.setdefault(command, (page, spec))
    runnable = []
    for command, (page, spec) in specs.items():
        if "skip" in spec or (spec.get("data") and data_dir is None):
            print(f"not run ({page}): {command}: {spec.get('skip', no_data)}")
        else:
            runnable.append(command)

    def run(command: str):
        spec = specs[command][1]
        argv = shlex.split(spec.get("as", command))
        argv = [a.replace("runs/", str(tmp_path / "runs") + "/") for a in argv]
        if spec.get("data") == "flag":
            argv.append(f"--config.dataset.data_dir={data_dir}")
        set_first = {}  # VARIABLE=value before the command, as a shell reads it
        while "=" in argv[0] and argv[0].split("=")[0].isidentifier():
            name, value = argv.pop(0).split("=", 1)
            set_first[name] = value
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                              env={**env, **set_first}, timeout=300)

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
        page, spec = specs[command]
        assert result.returncode == 0, f"{page}: {command}\n{result.stderr[-2000:]}"
        if "quote" in spec:
            assert result.stdout.strip().splitlines()[-1] == spec["quote"], f"{page}: {command}"


def anchor(heading: str) -> str:
    """The anchor a Markdown heading gets (GitHub's rule, for headings without links)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    for page in pages():
        folder = os.path.dirname(os.path.join(ROOT, page))
        for target in re.findall(r"\]\(([^)\s]+)\)", open(os.path.join(ROOT, page)).read()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, fragment = target.partition("#")
            path = os.path.normpath(os.path.join(folder, path)) if path else \
                os.path.join(ROOT, page)
            assert os.path.exists(path), f"{page}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.*)$", open(path).read(), re.M)
                assert fragment in map(anchor, headings), f"{page}: {target}"


def test_every_design_note_the_code_cites_is_in_docs_design():
    sections = set(re.findall(r"^## (\d+)\. ", open(os.path.join(ROOT, "docs", "design.md")).read(),
                              re.M))
    sources = [os.path.join(ROOT, "pyproject.toml")] + [
        path for package in ("nets", "data", "train", "experiments", "tests")
        for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)]
    cited = {}
    for path in sources:
        text = " ".join(open(path).read().split())
        for number in re.findall(r"docs/design\.md,? (?:section )?(\d+)", text):
            cited.setdefault(number, os.path.relpath(path, ROOT))
    assert cited  # the pattern still finds the citations
    assert {n: p for n, p in cited.items() if n not in sections} == {}
