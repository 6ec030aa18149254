"""Hostile input and faults over every command, as one table: each case exits non-zero with exactly one
`error:` line (or does what the README documents), and leaves every file already on disk as it was.

The commands run in this process through `nano_gpt.cli.main` (exit code, stdout and stderr as a user sees
them) because a real process costs seconds of imports per case; the cases where the process itself
matters (the terminal's encoding) run as one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import assert_one_line_error, files_under, run_cli, run_cli_here as cli, write_hellaswag_file
from data_corpus import documents
from nano_gpt.data.prepare import prepare_dataset
from nano_gpt.train import TrainConfig, train

DEEP = "[" * 100_000 + "]" * 100_000  # past json's recursion limit
HUGE_INT = "1" * 5000  # past Python's 4300-digit limit on int <-> str


@dataclass(frozen=True)
class World:
    """What a user already has on disk: a prepared dataset, a finished run, a Hugging Face folder."""

    root: Path
    hf: Path
    dataset: str  # the name prepare_dataset gave the local corpus
    data: Path  # --dataset-dir
    run: Path  # --checkpoint-dir of a finished run
    checkpoint: Path
    log: Path
    hellaswag: Path

    def split(self, split: str) -> Path:
        return next(self.data.glob(f"*/{split}"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_hf_gpt2_vocab_dir: Path) -> World:
    root = tmp_path_factory.mktemp("world")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(documents(300, words=40)))
    prepare_dataset(str(corpus), dataset_dir=root / "data", num_workers=1)
    run = root / "run"
    train(TrainConfig(model="gpt2-xxs", dataset=str(corpus), dataset_dir=str(root / "data"), device="cpu",
                      dtype="fp32", compile=False, sequence_length=32, micro_batch_size=2, total_batch_size=64,
                      max_steps=1, warmup_steps=0, max_lr=1e-3, validation_steps=1, hellaswag_samples=0,
                      checkpoint_dir=str(run)))
    return World(root=root, hf=tiny_hf_gpt2_vocab_dir, dataset=str(corpus), data=root / "data", run=run,
                 checkpoint=next(run.glob("checkpoint_*.bin")), log=run / "train_log.jsonl",
                 hellaswag=write_hellaswag_file(root / "hellaswag.jsonl"))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def hellaswag_line(**overrides: object) -> str:
    return json.dumps({"ctx": "A man is cooking. He", "endings": ["cuts.", "flies.", "reads.", "sings."], "label": 0,
                       **overrides}) + "\n"


def hf_folder(work: Path, world: World, config: str | bytes) -> Path:
    """The tiny Hugging Face folder with its config.json replaced."""
    folder = work / "hf"
    shutil.copytree(world.hf, folder)
    write(folder / "config.json", config)
    return folder


HUGE = object()  # stands for HUGE_INT, which json.dumps cannot write


def hf_config(world: World, **changes: object) -> str:
    config = {**json.loads((world.hf / "config.json").read_text()), **changes}
    return json.dumps({k: "@huge" if v is HUGE else v for k, v in config.items()}).replace('"@huge"', HUGE_INT)


def log_with(world: World, *lines: str) -> str:
    return world.log.read_text() + "".join(line + "\n" for line in lines)


def dataset_with(work: Path, world: World, file: str, content: str | bytes | None) -> Path:
    """A copy of the prepared dataset with `file` (relative to the dataset's folder) replaced, or deleted."""
    data = work / "data"
    shutil.copytree(world.data, data)
    path = next(data.iterdir()) / file
    if content is None:
        path.unlink()
    else:
        write(path, content)
    return data


@dataclass(frozen=True)
class Case:
    """`args(world, work)` builds the command line (writing any bad files into `work`, the working directory);
    `exit_code` 0 marks documented behaviour, whose stdout must hold every fragment."""

    args: Callable[[World, Path], list[str]]
    fragments: tuple[str, ...]
    exit_code: int = 1


def case(args: Callable[[World, Path], list[str]], *fragments: str, exit_code: int = 1) -> Case:
    return Case(args, fragments, exit_code)


S = ["sample", "--dtype=fp32", "--device=cpu", "--max-length=12", "--num-sequences=2"]  # + --pretrained or --checkpoint
E = ["eval", "--dtype=fp32", "--device=cpu"]
T = ["train", "--model=gpt2-xxs", "--device=cpu", "--dtype=fp32", "--no-compile", "--sequence-length=32",
     "--micro-batch-size=2", "--total-batch-size=64", "--max-steps=2", "--warmup-steps=0", "--validation-steps=1",
     "--hellaswag-samples=0"]


def train_args(world: World, work: Path, *extra: str) -> list[str]:
    given = {a.split("=")[0] for a in extra}
    base = [a for a in T if a.split("=")[0] not in given]
    defaults = [f"--dataset={world.dataset}", f"--dataset-dir={world.data}", f"--checkpoint-dir={work / 'run'}"]
    return [*base, *[a for a in defaults if a.split("=")[0] not in given], *extra]


CASES: dict[str, Case] = {
    # --- the argument parser's own errors: one line, exit 2, for every command ---------------------
    "parser: sample --num-sequences=0": case(lambda w, d: ["sample", "--num-sequences=0"], "--num-sequences",
                                             exit_code=2),
    "parser: sample --seed=abc": case(lambda w, d: ["sample", "--seed=abc"], "--seed", exit_code=2),
    "parser: sample --top-p=1.5": case(lambda w, d: ["sample", "--top-p=1.5"], "--top-p", exit_code=2),
    "parser: sample --top-p=nan": case(lambda w, d: ["sample", "--top-p=nan"], "--top-p", exit_code=2),
    "parser: sample --temperature=nan": case(lambda w, d: ["sample", "--temperature=nan"], "--temperature",
                                             exit_code=2),
    "parser: sample --max-length without a value": case(lambda w, d: ["sample", "--max-length"], "--max-length",
                                                        exit_code=2),
    "parser: eval --batch-size=0": case(lambda w, d: ["eval", "--batch-size=0"], "--batch-size", exit_code=2),
    "parser: eval --hellaswag-samples=x": case(lambda w, d: ["eval", "--hellaswag-samples=x"], "--hellaswag-samples",
                                               exit_code=2),
    "parser: prepare_dataset without --dataset": case(lambda w, d: ["prepare_dataset"], "--dataset", exit_code=2),
    "parser: prepare_dataset --tokens-per-shard=0": case(lambda w, d: ["prepare_dataset", "--dataset=x",
                                                                       "--tokens-per-shard=0"], "--tokens-per-shard",
                                                         exit_code=2),
    "parser: train --max-steps=abc": case(lambda w, d: ["train", "--max-steps=abc"], "--max-steps", exit_code=2),
    "parser: train --no-such-flag": case(lambda w, d: ["train", "--no-such-flag"], "--no-such-flag", exit_code=2),
    "parser: export --devic=cpu": case(lambda w, d: ["export", "--devic=cpu"], "--devic", exit_code=2),
    "parser: plot without a log": case(lambda w, d: ["plot"], "Missing argument", exit_code=2),
    "parser: plot --smoothing=abc": case(lambda w, d: ["plot", str(w.log), "--smoothing=abc"], "--smoothing",
                                         exit_code=2),
    "parser: an unknown command": case(lambda w, d: ["sampel"], "No such command 'sampel'", exit_code=2),
    "parser: an unknown top-level option": case(lambda w, d: ["--verbose", "sample"], "--verbose", exit_code=2),

    # --- numbers at the edges ------------------------------------------------------------------------
    "sample --seed beyond 64 bits": case(lambda w, d: [*S, f"--pretrained={w.hf}", f"--seed={2**64}"],
                                         f"--seed={2**64}", "2**64 - 1"),
    "sample --seed=-1": case(lambda w, d: [*S, f"--pretrained={w.hf}", "--seed=-1"], "--seed=-1"),
    "sample --sample-seed of 40 digits": case(lambda w, d: [*S, f"--pretrained={w.hf}", "--sample-seed=" + "9" * 40],
                                              "--sample-seed="),
    "sample --seed=2**64-1 is the largest seed": case(
        lambda w, d: [*S, f"--pretrained={w.hf}", f"--seed={2**64 - 1}", "Hello"], "> Hello", exit_code=0),
    "sample --num-sequences in the billions": case(
        lambda w, d: [*S, f"--pretrained={w.hf}", "--num-sequences=5000000000"], "5,000,000,000 sequences",
        "lower --num-sequences"),
    "sample --temperature=inf": case(lambda w, d: [*S, f"--pretrained={w.hf}", "--temperature=inf"],
                                     "--temperature=inf", "finite"),
    "sample --max-length beyond the context": case(lambda w, d: [*S, f"--pretrained={w.hf}", f"--max-length={10**30}"],
                                                   "lower --num-sequences or --max-length"),
    "sample --max-length=-5": case(lambda w, d: [*S, f"--pretrained={w.hf}", "--max-length=-5"], "--max-length=-5"),
    "sample --top-k beyond the vocabulary samples from all of it": case(
        lambda w, d: [*S, f"--pretrained={w.hf}", f"--top-k={10**12}", "--seed=1", "Hi"], "> Hi", exit_code=0),
    "eval --sequence-length beyond the context": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-samples=0", f"--dataset={w.dataset}",
                      f"--dataset-dir={w.data}", f"--sequence-length={10**11}"], "exceeds the model's context"),
    "eval --batch-size that cannot fit in memory": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-samples=0", f"--dataset={w.dataset}",
                      f"--dataset-dir={w.data}", f"--batch-size={10**11}"], "needs about", "lower --batch-size"),
    "eval --validation-steps beyond the split measures it once": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-samples=0", f"--dataset={w.dataset}",
                      f"--dataset-dir={w.data}", f"--validation-steps={10**20}", "--sequence-length=32"],
        "val_loss: ", exit_code=0),
    "eval --hellaswag-samples beyond the file scores the whole file": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={w.hellaswag}", f"--hellaswag-samples={10**20}"],
        "hellaswag examples: 4", exit_code=0),
    "train --seed beyond 64 bits": case(lambda w, d: train_args(w, d, f"--seed={10**30}"), "--seed="),
    "train --max-lr=nan": case(lambda w, d: train_args(w, d, "--max-lr=nan"), "--max-lr=nan"),
    "train --grad-clip=inf": case(lambda w, d: train_args(w, d, "--grad-clip=inf"), "--grad-clip=inf"),
    "train --sequence-length beyond the context": case(lambda w, d: train_args(w, d, f"--sequence-length={10**14}"),
                                                       "--sequence-length"),
    "train --total-batch-size of 24 digits": case(lambda w, d: train_args(w, d, f"--total-batch-size={10**23}"),
                                                  "--total-batch-size"),
    "train --warmup-steps=-1": case(lambda w, d: train_args(w, d, "--warmup-steps=-1"), "--warmup-steps=-1"),
    "prepare_dataset --num-workers of 11 digits": case(
        lambda w, d: ["prepare_dataset", f"--dataset={w.dataset}", f"--dataset-dir={d / 'ds'}", f"--num-workers={10**11}"],
        "--num-workers"),
    "prepare_dataset --validation-tokens of 24 digits": case(
        lambda w, d: ["prepare_dataset", f"--dataset={w.dataset}", f"--dataset-dir={d / 'ds'}", "--num-workers=1",
                      f"--validation-tokens={10**23}"], "--validation-tokens"),
    "plot: a step of 31 digits": case(
        lambda w, d: ["plot", str(write(d / "run.jsonl", log_with(w, json.dumps({"kind": "train", "step": 10**30,
                                                                                   "loss": 1.0}))))],
        'non-negative integer "step"'),
    "plot: an integer of 5000 digits": case(
        lambda w, d: ["plot", str(write(d / "run.jsonl", log_with(w, '{"kind": "train", "step": 5, "loss": ' + HUGE_INT
                                                                  + "}")))], "run.jsonl:", "not valid JSON"),
    "plot: a loss of 1e400 (inf) and NaN are left out": case(
        lambda w, d: ["plot", str(write(d / "run.jsonl", log_with(w, '{"kind": "train", "step": 7, "loss": 1e400}',
                                                                  '{"kind": "train", "step": 8, "loss": NaN}'))),
                      f"--output={d / 'out' / 'plot.png'}"], "last step 8", exit_code=0),
    "plot: token counts past a float's range are left out": case(
        lambda w, d: ["plot", str(write(d / "run.jsonl", log_with(w, json.dumps({"kind": "train", "step": 9, "loss": 2.5,
                                                                                   "tokens": 10**400})))),
                      f"--output={d / 'out' / 'plot.png'}"], "final train loss  2.5000", exit_code=0),
    "plot --baseline-loss=nan": case(lambda w, d: ["plot", str(w.log), "--baseline-loss=nan"], "baseline loss", "nan"),
    "plot --baseline-hellaswag=inf": case(lambda w, d: ["plot", str(w.log), "--baseline-hellaswag=inf"],
                                          "baseline HellaSwag"),
    "plot --smoothing=nan": case(lambda w, d: ["plot", str(w.log), "--smoothing=nan"], "smoothing"),
    "eval: a HellaSwag label '²' that passes str.isdigit": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(label='²'))}"],
        "h.jsonl, line 1", "label '²'"),
    "eval: a HellaSwag label of 5000 digits": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(label=HUGE_INT))}"],
        "h.jsonl, line 1", "label '111", "... is out of range"),
    "eval: a HellaSwag label of 31 digits": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(label=10**30))}"],
        "h.jsonl, line 1", "out of range"),
    "eval: a HellaSwag label 1.5": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(label=1.5))}"],
        "label 1.5"),
    "eval: a HellaSwag integer of 5000 digits": case(
        lambda w, d: [*E, f"--pretrained={w.hf}",
                      f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(n=0).replace('0}', HUGE_INT + '}'))}"],
        "h.jsonl, line 1", "too many digits"),
    "train: a HellaSwag label '²' stops before step 0": case(
        lambda w, d: train_args(w, d, "--hellaswag-samples=1",
                                f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(label='²'))}"), "label '²'"),

    # --- deeply nested JSON --------------------------------------------------------------------------
    "deep JSON: a HellaSwag file": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={write(d / 'h.jsonl', DEEP + chr(10))}"],
        "h.jsonl, line 1", "nested too deeply"),
    "deep JSON: a plot log": case(lambda w, d: ["plot", str(write(d / "run.jsonl", DEEP + "\n"))], "run.jsonl:1:"),
    "deep JSON: a manifest": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-samples=0", f"--dataset={w.dataset}",
                      f"--dataset-dir={dataset_with(d, w, 'validation/manifest.json', DEEP)}", "--sequence-length=32"],
        "manifest.json", "prepare_dataset"),
    "deep JSON: config.json": case(lambda w, d: [*S, f"--pretrained={hf_folder(d, w, DEEP)}"], "config.json",
                                   "nested too deeply"),
    "deep JSON: a prepare_dataset jsonl line": case(
        lambda w, d: ["prepare_dataset", f"--dataset={write(d / 'c.jsonl', DEEP + chr(10))}", "--num-workers=1",
                      f"--dataset-dir={d / 'ds'}"], "c.jsonl:1", "RecursionError"),
    "config.json with an integer of 5000 digits": case(
        lambda w, d: [*S, f"--pretrained={hf_folder(d, w, hf_config(w, n_layer=HUGE))}"],
        "config.json", "too many digits"),
    "config.json with n_layer of 31 digits": case(
        lambda w, d: [*S, f"--pretrained={hf_folder(d, w, hf_config(w, n_layer=10**30))}"], "config.json", "n_layer"),
    "config.json with layer_norm_epsilon NaN": case(
        lambda w, d: [*S, f"--pretrained={hf_folder(d, w, hf_config(w).replace('1e-05', 'NaN'))}"], "config.json",
        "layer_norm_epsilon"),

    # --- model files from elsewhere ----------------------------------------------------------------
    "sample --checkpoint that does not exist": case(lambda w, d: [*S, f"--checkpoint={d / 'nope.bin'}"], "nope.bin"),
    "sample --checkpoint that is a folder": case(lambda w, d: [*S, f"--checkpoint={w.run}"], "/run"),
    "sample --checkpoint that is empty": case(lambda w, d: [*S, f"--checkpoint={write(d / 'c.bin', b'')}"], "c.bin"),
    "sample --checkpoint cut in half": case(
        lambda w, d: [*S, f"--checkpoint={write(d / 'c.bin', w.checkpoint.read_bytes()[: w.checkpoint.stat().st_size // 2])}"],
        "c.bin"),
    "eval --checkpoint of garbage bytes": case(
        lambda w, d: [*E, f"--checkpoint={write(d / 'c.bin', bytes(range(256)) * 64)}", "--hellaswag-samples=0"], "c.bin"),
    "export --checkpoint that is a text file": case(
        lambda w, d: ["export", f"--checkpoint={write(d / 'c.bin', 'hello')}", f"--export-dir={d / 'out'}"], "c.bin"),
    "sample --pretrained folder without config.json": case(lambda w, d: [*S, f"--pretrained={w.run}"], "config.json"),
    "sample --pretrained whose config.json is a list": case(lambda w, d: [*S, f"--pretrained={hf_folder(d, w, '[1]')}"],
                                                            "config.json"),
    "sample --pretrained whose config.json has n_head 0": case(
        lambda w, d: [*S, f"--pretrained={hf_folder(d, w, hf_config(w, n_head=0))}"], "config.json", "n_head"),
    "sample --pretrained whose config.json is not UTF-8": case(
        lambda w, d: [*S, "--pretrained=" + str(hf_folder(d, w, b"{\xff}"))], "config.json", "UTF-8"),
    "sample --pretrained of a Hub repo, offline": case(lambda w, d: [*S, "--pretrained=nobody/no-such-gpt2"],
                                                        "nobody/no-such-gpt2"),
    "sample an empty prompt": case(lambda w, d: [*S, f"--pretrained={w.hf}", ""], "the prompt is empty"),
    "sample a prompt longer than the context is cropped, as in nanoGPT": case(
        lambda w, d: [*S, f"--pretrained={w.hf}", "--max-length=310", "word " * 300], "> word word", exit_code=0),
    "sample with both --pretrained and --checkpoint": case(
        lambda w, d: [*S, f"--pretrained={w.hf}", f"--checkpoint={w.checkpoint}"], "either --pretrained or --checkpoint"),
    "sample --device that does not exist": case(lambda w, d: ["sample", f"--pretrained={w.hf}", "--device=tpu"],
                                                "tpu"),
    "sample --dtype=fp64": case(lambda w, d: ["sample", f"--pretrained={w.hf}", "--dtype=fp64"], "fp64"),

    # --- HellaSwag and datasets --------------------------------------------------------------------
    "eval --hellaswag-file that does not exist": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={d / 'nope.jsonl'}"], "nope.jsonl"),
    "eval --hellaswag-file that is a folder": case(lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={d}"],
                                                   "/work is a folder"),
    "eval --hellaswag-file that is empty": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", f"--hellaswag-file={write(d / 'h.jsonl', '')}"], "h.jsonl", "empty"),
    "eval --hellaswag-file that is not UTF-8": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-file=" + str(write(d / "h.jsonl", b"\xff\xfe{}\n"))],
        "h.jsonl, line 1"),
    "eval --hellaswag-file with three endings": case(
        lambda w, d: [*E, f"--pretrained={w.hf}",
                      f"--hellaswag-file={write(d / 'h.jsonl', hellaswag_line(endings=['a', 'b', 'c']))}"], "3 endings"),
    "eval --dataset never prepared": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-samples=0", "--dataset=nothing", f"--dataset-dir={d}"],
        "prepare_dataset"),
    "eval on a split whose shard was cut short": case(
        lambda w, d: [*E, f"--pretrained={w.hf}", "--hellaswag-samples=0", f"--dataset={w.dataset}",
                      f"--dataset-dir={dataset_with(d, w, 'validation/shard_000000.bin', b'12')}", "--sequence-length=32"],
        "shard_000000.bin", "prepare_dataset"),
    "train on a shard holding ids past the vocabulary": case(
        lambda w, d: train_args(w, d, "--dataset-dir=" + str(dataset_with(
            d, w, "train/shard_000000.bin", b"\xff\xff" * ((next(w.split("train").glob("shard_*.bin")).stat().st_size) // 2)))),
        "shard_000000.bin", "prepare_dataset"),
    "train on a split whose manifest is gone": case(
        lambda w, d: train_args(w, d, f"--dataset-dir={dataset_with(d, w, 'train/manifest.json', None)}",
                                "--no-prepare"),
        "train", "prepare_dataset"),
    "prepare_dataset --dataset that does not exist": case(
        lambda w, d: ["prepare_dataset", f"--dataset={d / 'nope.txt'}", f"--dataset-dir={d / 'ds'}"], "nope.txt"),
    "prepare_dataset --dataset that is empty": case(
        lambda w, d: ["prepare_dataset", f"--dataset={write(d / 'c.txt', '')}", f"--dataset-dir={d / 'ds'}",
                      "--num-workers=1"], "empty"),
    "prepare_dataset --dataset that is not UTF-8": case(
        lambda w, d: ["prepare_dataset", "--dataset=" + str(write(d / "c.txt", b"caf\xe9 " * 100)), f"--dataset-dir={d / 'ds'}",
                      "--num-workers=1"], "c.txt", "UTF-8"),
    "prepare_dataset: a jsonl whose text is a number": case(
        lambda w, d: ["prepare_dataset", "--dataset=" + str(write(d / "c.jsonl", '{"text": 42}\n')),
                      f"--dataset-dir={d / 'ds'}", "--num-workers=1"], "c.jsonl:1"),
    "prepare_dataset: a garbage parquet file": case(
        lambda w, d: ["prepare_dataset", f"--dataset={write(d / 'c.parquet', b'PAR1 not really')}",
                      f"--dataset-dir={d / 'ds'}", "--num-workers=1"], "c.parquet"),
    "prepare_dataset --text-column the jsonl does not have": case(
        lambda w, d: ["prepare_dataset", "--dataset=" + str(write(d / "c.jsonl", '{"body": "words"}\n')),
                      "--text-column=text", f"--dataset-dir={d / 'ds'}", "--num-workers=1"], "c.jsonl:1", "text"),
    "prepare_dataset --dataset=hf:... offline": case(
        lambda w, d: ["prepare_dataset", "--dataset=hf:nobody/nothing", f"--dataset-dir={d / 'ds'}"], "nobody/nothing"),
    "prepare_dataset --splits it does not have": case(
        lambda w, d: ["prepare_dataset", f"--dataset={w.dataset}", "--splits=test", f"--dataset-dir={d / 'ds'}"],
        "no split 'test'"),
    "prepare_dataset --dataset-dir under a file": case(
        lambda w, d: ["prepare_dataset", f"--dataset={w.dataset}", "--num-workers=1",
                      f"--dataset-dir={write(d / 'f', 'x') / 'ds'}"], "f"),

    # --- training runs and their folders -----------------------------------------------------------
    "train --model that does not exist": case(lambda w, d: train_args(w, d, "--model=gpt9"), "gpt9"),
    "train --dtype=fp64": case(lambda w, d: train_args(w, d, "--dtype=fp64"), "--dtype=fp64"),
    "train --dataset never prepared": case(lambda w, d: train_args(w, d, "--dataset=nothing", "--no-prepare"),
                                           "prepare_dataset"),
    "train --dataset that does not exist": case(lambda w, d: train_args(w, d, "--dataset=nothing"), "matches no files"),
    "train --checkpoint-dir under a file": case(
        lambda w, d: train_args(w, d, f"--checkpoint-dir={write(d / 'f', 'x') / 'run'}"), "--checkpoint-dir",
        "not writable"),
    "train --log-file that is a folder": case(lambda w, d: train_args(w, d, f"--log-file={d}"), "--log-file",
                                              "is a folder"),
    "train --resume from a file that does not exist": case(lambda w, d: train_args(w, d, f"--resume={d / 'nope.bin'}"),
                                                           "nope.bin"),
    "train --resume from garbage": case(lambda w, d: train_args(w, d, f"--resume={write(d / 'c.bin', 'garbage')}"),
                                        "c.bin"),
    "train a new run into a folder holding a finished one": case(
        lambda w, d: train_args(w, d, f"--checkpoint-dir={w.run}"), "already holds a run", "--overwrite"),
    "train --overwrite with --resume": case(lambda w, d: train_args(w, d, "--overwrite", "--resume=auto"),
                                            "--overwrite", "--resume"),
    "train --pretrained folder whose config.json is not JSON": case(
        lambda w, d: train_args(w, d, "--pretrained=" + str(hf_folder(d, w, "{oops"))), "config.json"),
    "train --warmup-steps not below --max-steps": case(lambda w, d: train_args(w, d, "--warmup-steps=5", "--max-steps=5"),
                                                       "--warmup-steps=5"),

    # --- exports -----------------------------------------------------------------------------------
    "export --export-dir=. --force": case(
        lambda w, d: ["export", f"--checkpoint={w.checkpoint}", "--export-dir=.", "--force"], "working directory"),
    "export --export-dir= (empty)": case(lambda w, d: ["export", f"--checkpoint={w.checkpoint}", "--export-dir="],
                                         "empty"),
    "export --force over a training run": case(
        lambda w, d: ["export", f"--checkpoint={w.checkpoint}", f"--export-dir={w.run}", "--force"], "/run"),
    "export --export-dir under a file": case(
        lambda w, d: ["export", f"--checkpoint={w.checkpoint}", f"--export-dir={write(d / 'f', 'x') / 'out'}"],
        "is a file"),
    "export --model-card that does not exist": case(
        lambda w, d: ["export", f"--checkpoint={w.checkpoint}", f"--export-dir={d / 'out'}",
                      f"--model-card={d / 'nope.md'}"], "nope.md"),
    "export --private without --push-to-hub": case(
        lambda w, d: ["export", f"--checkpoint={w.checkpoint}", f"--export-dir={d / 'out'}", "--private"],
        "--push-to-hub"),
    "export --push-to-hub with a bad repo id": case(
        lambda w, d: ["export", f"--checkpoint={w.checkpoint}", f"--export-dir={d / 'out'}", "--push-to-hub=a/b/c"],
        "a/b/c"),
    "export with neither --checkpoint nor --pretrained": case(lambda w, d: ["export", f"--export-dir={d / 'out'}"],
                                                              "--checkpoint"),

    # --- plot inputs and outputs -------------------------------------------------------------------
    "plot a log that does not exist": case(lambda w, d: ["plot", "nope.jsonl"], "nope.jsonl", "not found"),
    "plot a run folder": case(lambda w, d: ["plot", str(w.run)], "is a folder", "run/train_log.jsonl"),
    "plot an empty log": case(lambda w, d: ["plot", str(write(d / "run.jsonl", "\n"))], "holds no train"),
    "plot a log with a line that is not JSON": case(
        lambda w, d: ["plot", str(write(d / "run.jsonl", log_with(w, "{oops}", '{"kind": "val", "step": 9}')))],
        "run.jsonl:", "not valid JSON"),
    "plot a log that is not UTF-8": case(lambda w, d: ["plot", str(write(d / "run.jsonl", b"\xff\xfe{\n"))],
                                         "run.jsonl:1"),
    "plot a seed log with a number that does not parse": case(
        lambda w, d: ["plot", str(write(d / "train.log", "val: step: 0 | loss: 10.95\ntrain: step: x | loss: 9\n"))],
        "train.log:2", "seed project"),
    "plot with more --label than logs": case(lambda w, d: ["plot", str(w.log), "--label=a", "--label=b"], "--label"),
    "plot --output with an unknown suffix": case(lambda w, d: ["plot", str(w.log), "--output=plot.xyz"], "plot.xyz"),
    "plot --output under a file": case(lambda w, d: ["plot", str(w.log), f"--output={w.log}/plot.png"],
                                       "is a file, not a folder"),
    "plot --output that is a folder": case(
        lambda w, d: ["plot", str(w.log), f"--output={(d / 'out.png').mkdir() or d / 'out.png'}"], "out.png"),
}


def snapshot(world: World, work: Path) -> dict[str, bytes]:
    """Every file the user had: the world's and the working directory's."""
    return {f"{where}/{name}": content for where, folder in (("world", world.root), ("hf", world.hf), ("work", work))
            for name, content in files_under(folder).items()}


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_is_one_line_and_changes_nothing(name: str, world: World, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = spec.args(world, work)
    before = snapshot(world, work)
    result = cli(*args)
    if spec.exit_code == 0:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        for fragment in spec.fragments:
            assert fragment in result.stdout, result.stdout
    else:
        assert_one_line_error(result, *spec.fragments)
        assert result.returncode == spec.exit_code, result.stderr
    after = snapshot(world, work)
    assert {name: after.get(name) for name in before} == before  # nothing that was there changed or went away
    if spec.exit_code != 0:  # and nothing was written: at most an empty lock file or log
        assert {name: content for name, content in after.items() if name not in before and content} == {}


def test_help_is_unchanged_and_a_bare_nano_gpt_shows_it() -> None:
    for args in (["--help"], ["sample", "--help"], ["train", "--help"]):
        result = cli(*args)
        assert result.returncode == 0 and "Usage" in result.stdout and "error:" not in result.stderr, args
    bare = cli()
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr and "error:" not in bare.stderr


def test_debug_shows_the_parsers_error_as_a_traceback() -> None:
    result = cli("--debug", "sample", "--seed=abc")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "BadParameter" in result.stderr



# --- output encodings: a real process, since the interpreter picks its streams' encoding at start ---------

ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}


@pytest.mark.parametrize(("env", "num_sequences"), [({"PYTHONIOENCODING": "ascii"}, 1), (ASCII_LOCALE, 2)],
                         ids=["PYTHONIOENCODING=ascii, streamed", "LC_ALL=C, one line per sequence"])
def test_samples_print_to_a_terminal_that_is_not_utf8(tiny_hf_gpt2_vocab_dir: Path, env: dict[str, str],
                                                      num_sequences: int) -> None:
    result = run_cli("sample", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--dtype=fp32", "--device=cpu", "--max-length=16",
                     f"--num-sequences={num_sequences}", "--seed=0", "naïve ☃", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == num_sequences and all(line.startswith("> na") for line in lines), result.stdout
    assert all(ord(c) < 128 for c in result.stdout)  # what the stream cannot show is escaped, not a crash


def test_plot_summaries_print_to_a_terminal_that_is_not_utf8(tmp_path: Path) -> None:
    log = write(tmp_path / "run.jsonl", "".join(json.dumps({"kind": "train", "step": i, "loss": 5.0 - i}) + "\n"
                                                for i in range(3)))
    result = run_cli("plot", str(log), "--label=entraînement ☃", cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "entra\\xeenement \\u2603: last step 2" in result.stdout
