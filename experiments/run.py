"""The only place that knows nets, data and train at once: build them from a config and run."""
import copy
import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import data
import nets
from experiments import weights
from experiments.config import check_values, complete
from train import checkpoint, many, report, sampling, sharding, storage, workdir_lock
from train.dataset import Dataset, InMemory, Preprocesses, ReadsImageFiles, Text
from train.loop import counted, fit, scored_weights
from train.resume import RESUMABLE_CHANGES, flat
from train.trainer import Trainer
from train.state import TrainState
from train.workdir import check as check_workdir


LANGUAGE_MODELS = ("gpt", "lstm", "gru", "rnn")  # the nets with logits at every position

def build(config: ml_collections.ConfigDict, dataset=None, *, deferred: bool = False):
    """The model, freshly initialised, and the dataset that `config` names (or `dataset`, one
    made in Python, e.g. `data.load("arrays", arrays={...})`). With `deferred`, the model is a
    function that builds it, for `Trainer` to make its state in one compiled program rather
    than array by array (a bad model field then fails when the Trainer is made)."""
    dataset = dataset if dataset is not None else load_dataset(config)
    if isinstance(dataset, Text) and config.model.name not in LANGUAGE_MODELS:
        raise ValueError(f"model.name={config.model.name} reads images or feature vectors, but "
                         f"{config.dataset.name} is text ({counted(dataset)}): use one of "
                         f"{', '.join(LANGUAGE_MODELS)}")
    fields = {k: v for k, v in config.model.items() if k != "name"}

    def make() -> nnx.Module:
        return nets.build(config.model.name, input_shape=dataset.input_shape,
                          num_classes=dataset.num_outputs, seed=config.seed, **fields)

    return (make if deferred else make()), dataset


def load_dataset(config: ml_collections.ConfigDict):
    """The dataset `config` names, given the fields of `config.dataset` that it takes as options
    (`data.options`); the others are not its business and are left alone.

    `dataset.train_examples` > 0 keeps that many training examples (stratified by class, drawn
    by `dataset.split_seed`): the small-data regime, e.g. for studies of overfitting.
    """
    takes = data.options(config.dataset.name)
    options = {k: v for k, v in config.dataset.items() if k in takes}
    if "data_dir" in options:
        options["data_dir"] = options["data_dir"] or None
    dataset = data.load(config.dataset.name, **options)
    train_examples = config.dataset.train_examples
    if train_examples:
        if not isinstance(dataset, InMemory):
            raise ValueError(f"dataset.train_examples applies to in-memory datasets, not to "
                             f"{config.dataset.name}; set it to 0")
        dataset = dataset.subset("train", train_examples, config.dataset.split_seed)
    return dataset


def check_named_options(config: ml_collections.ConfigDict, named: list[str]) -> None:
    """Refuses a `dataset.*` field named on the command line that the chosen dataset does not
    take (`--config.dataset.image_size=64` for digits), listing the ones it does; fields a
    config merely carries for other datasets are fine."""
    takes = data.options(config.dataset.name)
    for key in named:
        field = key.split(".", 1)[1] if key.startswith("dataset.") else None
        if field and field not in takes and field not in data.EVERY_DATASET:
            raise ValueError(f"dataset {config.dataset.name!r} takes no option {field!r}; its "
                             f"options: {', '.join(takes) or 'none'} (and, for every dataset, "
                             f"{', '.join(data.EVERY_DATASET[1:])})")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       console: bool = True, allow_config_change: bool = False,
                       writers: Sequence = (), dataset: Dataset | None = None) -> dict:
    """Trains as `config` says, then evaluates the best checkpoint on the test split.

    Returns the training summary from `train.loop.fit` plus `"test"`: the test metrics of the
    weights the run is scored by (`scored_weights`), also written to
    `<workdir>/eval_<split>_<step>.json`; with a moving average of the weights
    (`optimizer.ema_decay`), `"tests"` holds both `raw` and `ema`. The evaluation reuses the
    run's compiled steps and dataset; the best checkpoint is read back from disk unless it is
    the final state. Where the work directory holds checkpoints saved under another config (a
    run resumed with `allow_config_change`), the best checkpoint is tested with the model its
    own saved config builds, as `evaluate` would. `console=False` keeps the progress bar and
    per-evaluation lines off the terminal; `writers` receive every record of the run (see
    `train.writers`). `dataset` trains on a dataset made in Python instead of the one
    `config.dataset` names.
    """
    check_values(config)
    check_workdir(workdir)  # a link inside it, or a name orbax cannot take: before any work
    model, dataset = build(config, dataset, deferred=True)
    own_test = _saved_under_another_config(workdir, config)
    summary = fit(config, workdir, model, dataset, console=console,
                  allow_config_change=allow_config_change, writers=writers,
                  test_split=None if own_test else config.test_split)
    if own_test and config.test_split:
        _test_under_its_config(workdir, summary, config, config.test_split, dataset)
    return summary


def _saved_under_another_config(workdir: str, config: ml_collections.ConfigDict) -> bool:
    """Whether a checkpoint in `workdir` was saved under a config that differs from `config`
    in more than where and how long it runs: its weights need the model that config builds,
    not the one this run compiles. Read before training; unreadable counts as different."""
    if not storage.is_folder(os.path.join(workdir, "checkpoints")):
        return False
    now = flat(json.loads(json.dumps(config.to_dict())))
    try:
        manager = checkpoint.open_manager(workdir, read_only=True)
        for step in manager.all_steps():
            saved = flat(json.loads(json.dumps(
                complete(checkpoint.saved_config(manager, step)).to_dict())))
            if any(saved.get(k) != v for k, v in now.items() if k not in RESUMABLE_CHANGES):
                return True
    except Exception:  # noqa: BLE001 - a damaged one is set aside by the run; test carefully
        return True
    return False


def _test_under_its_config(workdir: str, summary: dict, config: ml_collections.ConfigDict,
                           split: str, dataset=None) -> None:
    """Adds `test` and `tests` to `summary` as `fit` does, from the best checkpoint (or the
    last) restored with the model its own saved config builds."""
    step = summary["best_step"]
    step = int(summary["state"].step) if step is None else step
    with workdir_lock.hold(workdir, exclusive=False):
        r = _restore(workdir, step, config.parallel.strategy, config.parallel.mesh, "raw",
                     dataset)
        summary["tests"] = {weights: _evaluate(workdir, r, split, weights, "best")
                            for weights in (("raw", "ema") if r.trainer.ema_decay else ("raw",))}
    summary["test"] = summary["tests"][scored_weights(config)]


def variants(config: ml_collections.ConfigDict, seeds: Sequence[int] = (),
             learning_rates: Sequence[float] = ()) -> dict[str, ml_collections.ConfigDict]:
    """{name: config} of `config` for every seed crossed with every learning rate (either may
    be empty: then `config`'s own), named for their work directories: `seed_3`,
    `learning_rate_0.01`, or `seed_3-learning_rate_0.01` when both vary."""
    out = {}
    for seed in seeds or (config.seed,):
        for rate in learning_rates or (config.optimizer.learning_rate,):
            c = copy.deepcopy(config)
            c.seed, c.optimizer.learning_rate = int(seed), float(rate)
            name = "-".join(([f"seed_{seed}"] if seeds else [])
                            + ([f"learning_rate_{rate:g}"] if learning_rates else []))
            out[name or "run"] = c
    return out


def train_many(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
               console: bool = True, allow_config_change: bool = False,
               writers: Sequence = (), dataset: Dataset | None = None) -> list[dict]:
    """Trains every config as one compiled program (`train.many`: `jax.vmap` over the runs'
    states), each into its own workdir, then evaluates each run's best checkpoint on the test
    split: what `train_and_evaluate` returns, once per run, and exactly its numbers.

    The configs may differ only in `seed` and `optimizer.learning_rate` (`variants` makes
    such a group); anything else is refused up front, naming the keys. A run whose loss
    becomes NaN or infinite stops there (its summary's `diverged` says where) and the others
    go on; it gets no test. The runs train on one device, whatever `parallel` says. They
    resume as a run alone does, `allow_config_change` included.
    """
    configs = [copy.deepcopy(c) for c in configs]
    for c in configs:
        check_values(c)
    many.check_group(configs)
    for workdir in workdirs:  # before any work, as train_and_evaluate
        check_workdir(workdir)
    dataset = dataset if dataset is not None else load_dataset(configs[0])
    models = [build(c, dataset)[0] for c in configs]
    own_test = any(_saved_under_another_config(w, c) for w, c in zip(workdirs, configs))
    split = configs[0].test_split
    summaries = many.fit_many(configs, workdirs, models, dataset, console=console,
                              allow_config_change=allow_config_change, writers=writers,
                              test_split=None if own_test else split)
    if own_test and split:
        for config, workdir, summary in zip(configs, workdirs, summaries):
            if not summary.get("diverged"):
                _test_under_its_config(workdir, summary, config, split, dataset)
    return summaries


class Restored(NamedTuple):
    config: ml_collections.ConfigDict
    dataset: object  # what data.load returns
    trainer: Trainer
    state: TrainState
    step: int
    weights: str = "raw"  # what `evaluate` and `predict` score: raw, or ema (the moving average)


WEIGHTS = ("raw", "ema")


def restore(workdir: str, which: str | int = "best", *, strategy: str | None = None,
            mesh: str = "data=-1", weights: str | None = None, dataset=None,
            data_path: str | None = None, read_data: bool = True) -> Restored:
    """Restores checkpoint `which` ('best', 'latest' or a step) of `workdir` onto the devices here.

    The state is laid out for `mesh` (default: every device present) and `strategy` (default:
    the one it was trained with), whatever device count and strategy saved it. `weights` says
    what `evaluate` and `predict` score: `raw`, or `ema` for a run trained with
    `optimizer.ema_decay` (default: the run's `scored_weights`).

    The dataset is rebuilt from the description its checkpoint holds (name, options, classes,
    normalisation): no registry lookup, and files that moved or changed since training are
    named. `dataset` passes one made in Python (arrays, which a checkpoint does not hold);
    `data_path` says where the run's data is now (its file or folder, or for a prepared
    dataset its data_dir), checked to be the same data. With `read_data` off, no data is read
    where the checkpoint describes its preprocessing (`data.described`): enough to predict.
    """
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"--weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    _check_has_checkpoints(workdir)
    with workdir_lock.hold(workdir, exclusive=False):
        return _restore(workdir, which, strategy, mesh, weights, dataset, data_path, read_data)


def _restore(workdir: str, which, strategy, mesh, weights, given=None, data_path=None,
             read_data=True) -> Restored:
    """As `restore`, in a work directory held. The checkpoint is verified before anything of it
    is used, and the model is built from the config saved with it (completed with today's
    defaults for fields added since): a run resumed with --allow-config-change, or a checkpoint
    of another model, may differ from the others. One that cannot be read or verified is set
    aside (never deleted) and, for 'latest' or 'best', the next one is used, as a resumed run
    does; so it is when another command set it aside first."""
    _check_has_checkpoints(workdir)
    checkpoint.warn_of_strays(os.path.join(workdir, "checkpoints"))
    while True:  # each pass sets one damaged checkpoint aside, or returns
        manager = _open(workdir, which)
        if manager is None:
            continue
        verified = {}
        if which == "best":  # the newest config says which metric ranks the checkpoints
            latest = checkpoint.resolve_step(manager, "latest")
            try:
                verified[latest] = _verified_config(manager, latest)
                monitor = verified[latest].early_stopping.monitor
            except checkpoint.IncompatibleCheckpoint:
                raise
            except Exception as e:  # noqa: BLE001 - unreadable or unverified: damaged
                checkpoint.set_aside(manager, latest, e)
                continue
            manager = _open(workdir, which, monitor)
            if manager is None:
                continue
        step = checkpoint.resolve_step(manager, which)
        try:
            config = verified.get(step) or _verified_config(manager, step)
            described = checkpoint.saved_dataset(manager, step)
        except checkpoint.IncompatibleCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001 - unreadable or unverified: damaged
            _set_aside(manager, step, e, which)
            continue
        if described is not None and described.get("name") == "imported":
            raise ValueError(f"{workdir} holds imported weights ({described['source']}) and no "
                             f"data to use them on: fine-tune from them with "
                             f"--config.init_from={workdir}, or `descent export` them (a "
                             f"GPT-2 imported with its tokenizer also samples)")
        config.parallel.mesh = mesh
        config.parallel.strategy = strategy or config.parallel.strategy
        dataset = given
        if given is not None and described is not None:
            data.check_same(given, described)
        elif given is None and described is not None:
            dataset = None if read_data or data_path else data.described(described)
            dataset = dataset or data.from_description(described,
                                                       **_moved_to(described, data_path))
        model, dataset = build(config, dataset, deferred=True)  # without a description: by config
        trainer = Trainer(config, model, dataset)
        try:  # verified above
            state = checkpoint.restore(manager, step, trainer.initial_state, verify=False)
        except checkpoint.IncompatibleCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this one is damaged
            _set_aside(manager, step, e, which)
            continue
        weights = weights or scored_weights(config)
        trainer.weights(state, weights)  # a run without a moving average is named here
        return Restored(config, dataset, trainer, state, step, weights)


def _moved_to(described: dict, data_path: str | None) -> dict:
    """The option that says where a run's data now is, `data_path`: its file or folder
    (dataset.path), or the folder of prepared datasets (dataset.data_dir)."""
    if not data_path:
        return {}
    options = described.get("options", {})
    key = next((k for k in data.PATHS if k in options), None)
    if key is None:
        raise ValueError(f"--data-path: this run's dataset, {described['name']}, reads no files; "
                         f"leave --data-path out")
    data.check_path("--data-path", data_path, described["name"])
    if not data_path.startswith("gs://") and not os.path.exists(data_path):
        what = "file or folder" if key == "path" else "folder of prepared datasets"
        raise FileNotFoundError(f"--data-path {data_path!r} does not exist; point it at the "
                                f"{what} the run trained on")
    return {key: data_path}


def _open(workdir: str, which, monitor: str = "eval_accuracy"):
    """A read-only manager of `workdir`'s checkpoints, or None once one whose metrics cannot be
    read is set aside (the caller tries again)."""
    try:
        return checkpoint.open_manager(workdir, read_only=True, monitor=monitor)
    except checkpoint.DamagedCheckpoint as e:
        if e.step is None:
            raise
        _set_aside(os.path.join(workdir, "checkpoints"), e.step, e, which)
        return None


def _check_has_checkpoints(workdir: str) -> None:
    """Refuses a work directory without checkpoints before its lock is taken (or made)."""
    check_workdir(workdir)  # a link, or a name orbax cannot take, is the culprit to name first
    if not storage.is_folder(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints in {workdir!r}; "
                                f"run `descent train --workdir {workdir} ...` first")


def _verified_config(manager, step: int) -> ml_collections.ConfigDict:
    """The config saved with checkpoint `step`, completed, once every file of the checkpoint
    matches its checksums (DamagedCheckpoint if not)."""
    checkpoint.verify_checksums(manager, step)
    saved = checkpoint.saved_config(manager, step)
    try:
        return complete(saved)
    except Exception as e:  # noqa: BLE001 - verified: not damage, but not ours to build
        raise checkpoint.IncompatibleCheckpoint(
            f"the config saved with the checkpoint at step {step} in {manager.directory} does "
            f"not build a model this descent knows ({e})") from None


def _set_aside(manager, step: int, error: Exception, which) -> None:
    """Sets the damaged checkpoint at `step` aside; one asked for by its step is then named."""
    asked_for = str(which) == str(step)
    aside = checkpoint.set_aside(manager, step, error, fall_back=not asked_for)
    if asked_for:
        raise ValueError(f"the checkpoint at step {step} cannot be read; it was moved to "
                         f"{aside} ({checkpoint.reason(error)}). Evaluate another: best, "
                         f"latest or a step that remains") from None


def evaluate(workdir: str, which: str | int = "best", split: str = "test",
             weights: str | None = None, data_path: str | None = None) -> dict:
    """Evaluates checkpoint `which` of `workdir` on `split` with `weights` (`raw` or `ema`;
    default: the run's `scored_weights`); writes `eval_<split>_<step>[_ema].json`.
    `data_path`: where the run's data is now, if it moved (see `restore`)."""
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"--weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    _check_has_checkpoints(workdir)
    with workdir_lock.hold(workdir, exclusive=False):
        r = _restore(workdir, which, None, "data=-1", weights, data_path=data_path)
        return _evaluate(workdir, r, split, r.weights, which)


def _evaluate(workdir: str, r: Restored, split: str, weights: str, which) -> dict:
    """The metrics of `r`'s `weights` on `split`, recorded in `workdir`."""
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    metrics = r.trainer.evaluate(r.state, r.dataset.eval_batches(
        split, r.config.dataset.eval_batch_size, **shard), weights)
    return report.record_evaluation(workdir, {
        "split": split, "step": r.step, "checkpoint": str(which), "weights": weights,
        **metrics, "counted": counted(r.dataset)})


def sample(workdir: str, prompt: str | Sequence[str], length: int = 500,
           temperature: float = 1.0, which: str | int = "best", seed: int = 0, *,
           top_k: int = 0, top_p: float = 1.0, stop: str | None = None, cache: bool = True,
           progress: bool = False, mesh: str = "data=-1") -> str | list[str]:
    """`prompt` followed by up to `length` characters drawn from the language model in
    `workdir`; for a list of prompts, a list of texts, drawn together.

    Each character is drawn from softmax(logits / temperature) given the characters before it
    (at most the model's context of them), among the `top_k` most likely (0: all) and the
    fewest most likely that make up `top_p` of the probability (1: all); temperature 0 takes
    the most likely one. A text ends after `stop` once it is drawn. The GPT keeps a cache of
    what it has read (`train.sampling`); `cache=False` reads the whole window every step.
    `progress` shows a progress bar on a terminal's stderr while the characters are drawn.
    The run's weights are laid out as it trained (its strategy) on `mesh` (default: every
    device), and the prompts are split over its `data` axis.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if length < 1 or temperature < 0:
        raise ValueError(f"need --length >= 1 and --temperature >= 0, got {length} and "
                         f"{temperature}")
    if not (isinstance(top_k, int) and top_k >= 0) or not 0 < top_p <= 1:
        raise ValueError(f"need --top-k >= 1 (or 0 for every character) and 0 < --top-p <= 1, "
                         f"got {top_k} and {top_p}")
    if stop is not None and not stop:
        raise ValueError("--stop is empty; give the text to stop after, e.g. --stop $'\\n\\n'")
    if not prompts or not all(prompts):
        raise ValueError("the prompt is empty; give the text to continue, e.g. --prompt 'ROMEO:'")
    imported = weights.imported(workdir)
    if imported is not None:  # weights from elsewhere: no run, no data, maybe a tokenizer
        if imported.get("text") != "tokens":
            raise ValueError(f"{workdir} holds imported weights ({imported['source']}) without "
                             f"a tokenizer to sample text with: import a GPT-2 folder that "
                             f"holds vocab.json and merges.txt")
        model, dataset = weights.load_imported(workdir, which)
        placed = None
    else:
        r = restore(workdir, which, mesh=mesh, read_data=False)
        placed = sharding.batch_sharding(r.trainer.mesh)
        if not isinstance(r.dataset, Text):
            raise ValueError(f"{workdir} holds a {r.config.model.name} trained on "
                             f"{r.config.dataset.name}, which is not text; sample from a "
                             f"language model's run, e.g. experiments/configs/shakespeare_gpt.py")
        state = r.trainer.weights(r.state, r.weights)
        model, dataset = nnx.merge(r.trainer.graphdef, state.params, state.model_state), r.dataset
    encoded = [dataset.encode(p) for p in prompts]
    finished = None if stop is None else (lambda row, ids: stop in dataset.decode(ids))
    drawn = sampling.generate(model, encoded, length, dataset.context,
                              key=jax.random.PRNGKey(seed), temperature=temperature,
                              top_k=top_k, top_p=top_p, cache=cache, finished=finished,
                              progress=progress, sharding=placed)
    texts = []
    for p, ids in zip(prompts, drawn):
        text = dataset.decode(ids)
        if stop is not None and stop in text:
            text = text[:text.index(stop) + len(stop)]
        texts.append(p + text)
    return texts[0] if isinstance(prompt, str) else texts


def predict(restored: Restored, inputs, batch_size: int = 256) -> np.ndarray:
    """Class probabilities, (batch, classes), for inputs as the run's dataset holds them (raw
    pixels, raw table columns: the preprocessing the dataset applied in training is applied
    here); for a regression run, the predicted values, (batch, outputs), in the targets' units.
    Scores `restored.weights`."""
    state = restored.trainer.weights(restored.state, restored.weights)
    model = nnx.merge(restored.trainer.graphdef, state.params, state.model_state)
    dataset = restored.dataset
    prepare = dataset.model_inputs if isinstance(dataset, Preprocesses) else np.asarray
    inputs = np.asarray(inputs)
    outputs = [np.asarray(model(jnp.asarray(prepare(inputs[i:i + batch_size])), train=False))
               for i in range(0, len(inputs), batch_size)]
    outputs = np.concatenate(outputs) if outputs else np.zeros((0, dataset.num_outputs))
    if dataset.task == "regression":
        return outputs
    return np.asarray(jax.nn.softmax(outputs))


IMAGE_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def predict_files(restored: Restored, paths: list[str]) -> list[tuple[str, np.ndarray]]:
    """(what, prediction) for files a user has: image files (or folders of them) for a run on
    images, CSV files (a row each) for a run on a table, .npy arrays (a row each) for a run on
    arrays. Each is read as the run's dataset reads its own."""
    from data.local import as_input_rows, read_image, read_table_features

    dataset = restored.dataset
    if dataset.description().get("name") == "csv":
        labels, rows = [], []
        for path in paths:
            features = read_table_features(dataset, _existing_file(path))
            labels += [f"{path} row {i}" for i in range(1, len(features) + 1)]
            rows.append(features)
        return list(zip(labels, predict(restored, np.concatenate(rows))))
    if all(p.endswith(".npy") for p in paths):
        arrays = [as_input_rows(np.load(_existing_file(p), allow_pickle=False), dataset)
                  for p in paths]
        labels = [f"{p} row {i}" for p, a in zip(paths, arrays) for i in range(1, len(a) + 1)]
        return list(zip(labels, predict(restored, np.concatenate(arrays))))
    if len(dataset.input_shape) != 3:
        raise ValueError(f"this run's dataset ({dataset.name}) is not images, a table or "
                         f"arrays; predict reads image files, CSV rows or .npy arrays")
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                            if f.lower().endswith(IMAGE_FILES))
        else:
            files.append(_existing_file(path))
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_FILES)}) in {', '.join(paths)}")
    if isinstance(dataset, ReadsImageFiles):  # ImageNet-style: resize and centre-crop
        pixels = dataset.read_image_files(files)
    else:
        pixels = np.stack([read_image(f, dataset.input_shape) for f in files])
        if dataset.description().get("stored", "uint8") != "uint8":
            pixels = pixels.astype(np.float32) / 255.0  # a dataset that holds floats in [0, 1]
    return list(zip(files, predict(restored, pixels)))


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is not a file")
    return path
