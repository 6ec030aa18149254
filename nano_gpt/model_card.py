"""The model card (`README.md`) of an exported model: the Hub's YAML metadata and what the run knows.

A card states only what the checkpoint or its run's log records: architecture and size, dataset,
tokens and steps, the last losses and HellaSwag accuracy, the training settings and the hardware.
Anything not recorded is left out rather than guessed. The facts come, in this order of trust, from
the checkpoint's `metrics` and `run` (as `nano_gpt.checkpoint.read_checkpoint` gives them: this module
reads no model file), then from the run's log beside the checkpoint (`train_log.jsonl`), cut at the
checkpoint's step so a later part of the run is never claimed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from nano_gpt.checkpoint import OURS, OURS_SHARDED, Checkpoint
from nano_gpt.config import SAMPLE_PROMPT, GPTConfig
from nano_gpt.defaults import DEFAULT_LICENSE
from nano_gpt.errors import NanoGPTError
from nano_gpt.hub import HUB_ALIASES
from nano_gpt.model import GPT
from nano_gpt.runlog import LOG_FILE, TrainingLog, differing_settings, is_finite, read_log
from nano_gpt.tokenizer import VOCAB_SIZE, describe_tokenizer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

PLOT_FILE = "training_log.png"

# Our dataset names as Hub dataset ids and as words; `hf:OWNER/NAME` datasets are their own id.
HUB_DATASETS = {"finewebedu": "HuggingFaceFW/fineweb-edu"}
DATASET_NAMES = {
    "finewebedu": "FineWeb-Edu, sample-10BT",
    "tinyshakespeare": "TinyShakespeare (karpathy/char-rnn's input.txt)",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Settings that say where files were on the training machine, not how the model was trained.
_LOCAL_SETTINGS = {"dataset_dir", "checkpoint_dir", "log_file", "resume", "hellaswag_file", "device", "overwrite"}


@dataclass
class CardFacts:
    """What is known about an exported model; None (or empty) means unknown, and is left off the card."""

    config: GPTConfig
    parameters: int  # of the exported weights: GPT-2's 50,257-row vocabulary, the tied head counted once
    source: str | None = None  # the pretrained weights' name or folder, for a re-export
    step: int | None = None  # the checkpoint's last optimizer step, counted from 0
    train_config: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # device, dtype, world_size, nano_gpt_version
    tokens: int | None = None
    train_loss: float | None = None  # at `step`
    val_loss: float | None = None
    val_step: int | None = None
    hellaswag_acc: float | None = None
    hellaswag_acc_norm: float | None = None
    hellaswag_total: int | None = None
    hellaswag_step: int | None = None
    log: TrainingLog | None = None  # the run's log up to `step`, for the plot
    tokenizer: dict[str, Any] | None = None  # its record (`nano_gpt.tokenizer.tokenizer_record`); None: GPT-2's


def exported_parameters(model: GPT, n_vocab: int = VOCAB_SIZE) -> int:
    """Parameters of the exported weights: the training vocabulary's padding rows are cut on export."""
    padding_rows = max(model.config.vocab_size - n_vocab, 0)
    return model.num_parameters() - padding_rows * model.config.n_embd


def facts_from_model(model: GPT, source: str | None = None, tokenizer: dict[str, Any] | None = None) -> CardFacts:
    """The facts any model has: its shape, size and tokenizer (and where pretrained weights came from)."""
    n_vocab = tokenizer["n_vocab"] if tokenizer else VOCAB_SIZE
    return CardFacts(config=model.config, parameters=exported_parameters(model, n_vocab), source=source,
                     tokenizer=tokenizer)


def facts_from_checkpoint(checkpoint: Checkpoint) -> CardFacts:
    """Facts from a training checkpoint read by `read_checkpoint` and, where it lacks them, from its run's log."""
    facts = facts_from_model(checkpoint.model, tokenizer=checkpoint.tokenizer_record)
    if checkpoint.format not in (OURS, OURS_SHARDED):
        # Another project's checkpoint, or a Hugging Face folder: no run of ours to describe.
        logger.info("model card: %s is not a nano-gpt checkpoint; the card describes the model only", checkpoint.source)
        return facts
    facts.step = checkpoint.step
    facts.train_config = checkpoint.train_config
    facts.run = checkpoint.run
    metrics = checkpoint.metrics
    facts.tokens = _int(metrics.get("tokens"))
    facts.train_loss = _float(metrics.get("train_loss"))
    facts.val_loss = _float(metrics.get("val_loss"))
    facts.hellaswag_acc = _float(metrics.get("hellaswag_acc"))
    facts.hellaswag_acc_norm = _float(metrics.get("hellaswag_acc_norm"))
    log = _run_log(checkpoint.source, facts)
    if log is not None:
        _fill_from_log(facts, log)
    if facts.tokens is None and facts.step is not None and _int(facts.train_config.get("total_batch_size")):
        facts.tokens = (facts.step + 1) * facts.train_config["total_batch_size"]  # as the trainer counts them
    return facts


def facts_from_pretrained(name: str, model: GPT) -> CardFacts:
    """Facts for re-exported pretrained weights: shape, size and source (a Hub id, or a local folder's name)."""
    folder = Path(name).expanduser()
    return facts_from_model(model, source=folder.name if folder.is_dir() else HUB_ALIASES.get(name, name))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if is_finite(value) else None


def _run_log(checkpoint: Path, facts: CardFacts) -> TrainingLog | None:
    """The log of the run that wrote `checkpoint`, cut at its step; None if there is none or it is another run's."""
    path = checkpoint.parent / LOG_FILE
    if not path.is_file() or facts.step is None:
        return None
    try:
        log = read_log(path)
    except NanoGPTError as e:
        logger.warning("model card: not using the training log (%s)", e)
        return None
    logged = log.config.get("config")
    differing = differing_settings(logged if isinstance(logged, dict) else {}, facts.train_config)
    if differing:
        logger.warning("model card: %s is another run's log (%s differ from the checkpoint's); not using it",
                       path, ", ".join(differing))
        return None
    records = {kind: [r for r in rows if r["step"] <= facts.step] for kind, rows in log.records.items()}
    return dataclasses.replace(log, records=records)


def _fill_from_log(facts: CardFacts, log: TrainingLog) -> None:
    """Fill what the checkpoint's own dicts left unknown from the log's records up to the checkpoint's step."""
    facts.log = log
    last_train = next((r for r in log.records.get("train", []) if r["step"] == facts.step), None)
    if last_train is not None:
        facts.tokens = facts.tokens if facts.tokens is not None else _int(last_train.get("tokens"))
        facts.train_loss = facts.train_loss if facts.train_loss is not None else _float(last_train.get("loss"))
    # The log also says when an evaluation ran and on how many examples: taken where its value is the one reported.
    vals = [r for r in log.records.get("val", []) if is_finite(r.get("val_loss"))]
    if vals:
        facts.val_loss = float(vals[-1]["val_loss"]) if facts.val_loss is None else facts.val_loss
        if math.isclose(facts.val_loss, vals[-1]["val_loss"], rel_tol=1e-6):
            facts.val_step = vals[-1]["step"]
    hellaswag = [r for r in log.records.get("hellaswag", []) if is_finite(r.get("acc_norm"))]
    if hellaswag:
        last = hellaswag[-1]
        if facts.hellaswag_acc_norm is None:
            facts.hellaswag_acc, facts.hellaswag_acc_norm = _float(last.get("acc")), float(last["acc_norm"])
        if math.isclose(facts.hellaswag_acc_norm, last["acc_norm"], rel_tol=1e-6):
            facts.hellaswag_total, facts.hellaswag_step = _int(last.get("total")), last["step"]
    if not facts.run:
        config = log.config
        facts.run = {k: config[k] for k in ("device", "dtype", "world_size") if config.get(k) is not None}


def training_plot(facts: CardFacts, title: str) -> Figure | None:
    """The run's loss, HellaSwag and learning-rate figure; None without a log or without matplotlib."""
    if facts.log is None:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.info("model card: no training plot (matplotlib is not installed: pip install 'nano-gpt[plot]')")
        return None
    from nano_gpt.plot import plot_logs

    return plot_logs([dataclasses.replace(facts.log, label=title)])


def _hub_dataset(dataset: str) -> str | None:
    """The Hub dataset id of a `--dataset` value, if it names one."""
    if dataset in HUB_DATASETS:
        return HUB_DATASETS[dataset]
    if dataset.startswith("hf:"):
        repo = dataset.removeprefix("hf:").split(":")[0]
        return repo if _HUB_ID.fullmatch(repo) and not Path(repo).exists() else None
    return None


def _base_model(pretrained: str | None) -> str | None:
    if not pretrained or Path(pretrained).expanduser().exists():
        return None  # a local folder has no Hub id
    repo = HUB_ALIASES.get(pretrained, pretrained)
    return repo if _HUB_ID.fullmatch(repo) else None


def _count(n: int) -> str:
    """124439808 -> 124.4M, for prose; tables give the exact number too."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


# The license identifiers the Hub knows (huggingface.co/docs/hub/repositories-licenses); any other license is
# `other` with a name of its own, which the Hub asks for as `license_name`.
HUB_LICENSES = frozenset("""
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
    gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr
    mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
    deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma
    unknown""".split())
_LICENSE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


def parse_license(value: str) -> tuple[str, str | None]:
    """`--license` as the card's (license, license_name): a Hub identifier, or `other:NAME` for any other
    license; anything else is refused, since the Hub would show a card with an unknown license as broken."""
    if value in HUB_LICENSES:
        return value, None
    kind, _, name = value.partition(":")
    if kind == "other" and _LICENSE_NAME.fullmatch(name):
        return "other", name
    hint = "name it: --license=other:NAME (lowercase letters, digits, '-' and '.')" if kind == "other" else \
        "pass one of the Hub's identifiers (mit, apache-2.0, cc-by-4.0, ...; huggingface.co/docs/hub/" \
        "repositories-licenses) or --license=other:NAME for another license"
    raise NanoGPTError(f"--license={value} is not a license the Hub knows; {hint}")


def render_model_card(facts: CardFacts, *, name: str, repo_id: str | None = None,
                      license: str = DEFAULT_LICENSE, plot_file: str | None = None) -> str:
    """The card's text: YAML front matter for the Hub, then Markdown. `name` titles it; `repo_id`, when
    the folder goes to the Hub, is what the usage snippets load (else the local folder, `./name`)."""
    from huggingface_hub import ModelCard, ModelCardData

    train = facts.train_config
    dataset = train.get("dataset") if isinstance(train.get("dataset"), str) else None
    hub_dataset = _hub_dataset(dataset) if dataset else None
    license, license_name = parse_license(license)
    data = ModelCardData(
        library_name="transformers",
        license=license,
        license_name=license_name,
        tags=["gpt2", "text-generation", "nano-gpt"],
        datasets=[hub_dataset] if hub_dataset else None,
        pipeline_tag="text-generation",
        base_model=_base_model(train.get("pretrained")),
    )
    sections = [f"# {name}", _summary(facts, dataset), _model_section(facts), _training_section(facts, dataset),
                _results_section(facts, plot_file), _settings_section(train), _hardware_section(facts.run),
                _usage_section(facts.config, repo_id or f"./{name}")]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(x for x in sections if x) + "\n").content


def _summary(facts: CardFacts, dataset: str | None) -> str:
    train = facts.train_config
    if facts.step is not None:
        origin = f"fine-tuned from `{train['pretrained']}`" if train.get("pretrained") else "trained from scratch"
        on = f" on {DATASET_NAMES.get(dataset, f'`{dataset}`')}" if dataset else ""
        return f"A GPT-2 language model with {_count(facts.parameters)} parameters, {origin}{on} with nano-gpt."
    if facts.source:
        return (f"GPT-2 weights from `{facts.source}` ({_count(facts.parameters)} parameters), "
                "exported as a Hugging Face model folder with nano-gpt.")
    return f"A GPT-2 language model with {_count(facts.parameters)} parameters, exported with nano-gpt."


def _model_section(facts: CardFacts) -> str:
    c = facts.config
    return "## Model\n\n" + _table([
        ("Architecture", "GPT-2 (decoder-only transformer, `GPT2LMHeadModel`)"),
        ("Parameters", f"{facts.parameters:,} (input and output embeddings tied)"),
        ("Layers", str(c.n_layer)),
        ("Attention heads", str(c.n_head)),
        ("Embedding size", str(c.n_embd)),
        ("Context length", f"{c.block_size} tokens"),
        ("Vocabulary", f"{VOCAB_SIZE:,} tokens (GPT-2's BPE tokenizer)" if not facts.tokenizer or
         facts.tokenizer.get("kind") == "gpt2" else describe_tokenizer(facts.tokenizer)),
        *([("Source", f"`{facts.source}`")] if facts.source else []),
    ])


def _training_section(facts: CardFacts, dataset: str | None) -> str:
    train = facts.train_config
    training: list[tuple[str, str]] = []
    if dataset:
        training.append(("Dataset", DATASET_NAMES.get(dataset, f"`{dataset}`")))
    if train.get("pretrained"):
        training.append(("Fine-tuned from", f"`{train['pretrained']}`"))
    if facts.tokens is not None:
        training.append(("Tokens seen", f"{facts.tokens:,}"))
    if facts.step is not None:
        total = _int(train.get("max_steps"))
        training.append(("Optimizer steps", f"{facts.step + 1:,}" + (f" of {total:,} scheduled" if total else "")))
    if train:
        training.extend(_recipe(train))
    return "## Training\n\n" + _table(training) if training else ""


def _recipe(train: dict[str, Any]) -> list[tuple[str, str]]:
    """The optimizer and schedule rows; runs from before --optimizer and --lr-schedule trained with AdamW + cosine."""
    optimizer = train.get("optimizer", "adamw")
    schedule = train.get("lr_schedule", "cosine")
    decay = _float(train.get("decay_fraction"))
    optimizers = {"adamw": "AdamW", "muon": "Muon on the attention and MLP matrices, AdamW on the rest"}
    schedules = {"cosine": "warmup, then cosine decay",
                 "wsd": "warmup-stable-decay: warmup, constant, then a linear decay"
                        + (f" over the last {decay:.0%} of the steps" if decay is not None else "")}
    return [("Optimizer", optimizers.get(optimizer, f"`{optimizer}`")),
            ("Learning-rate schedule", schedules.get(schedule, f"`{schedule}`"))]


def _results_section(facts: CardFacts, plot_file: str | None) -> str:
    results: list[tuple[str, str]] = []
    if facts.train_loss is not None:
        results.append(("Train loss (last step)", f"{facts.train_loss:.4f}"))
    if facts.val_loss is not None:
        at = f" (step {facts.val_step})" if facts.val_step is not None else ""
        results.append(("Validation loss", f"{facts.val_loss:.4f}{at}"))
    if facts.hellaswag_acc_norm is not None:
        detail = ", ".join(x for x in (f"{facts.hellaswag_total:,} examples" if facts.hellaswag_total else "",
                                       f"step {facts.hellaswag_step}" if facts.hellaswag_step is not None else "") if x)
        results.append(("HellaSwag acc_norm", f"{facts.hellaswag_acc_norm:.4f}" + (f" ({detail})" if detail else "")))
        if facts.hellaswag_acc is not None:
            results.append(("HellaSwag acc", f"{facts.hellaswag_acc:.4f}"))
    if results or plot_file:
        text = "## Results\n\n" + (_table(results) if results else "")
        if plot_file:
            text += f"\n\n![Loss, HellaSwag accuracy and learning rate during training]({plot_file})"
        return text.replace("\n\n\n", "\n\n")
    return ""


def _settings_section(train: dict[str, Any]) -> str:
    settings = [(f"`{k}`", f"`{v}`") for k, v in train.items() if k not in _LOCAL_SETTINGS and v is not None]
    if not settings:
        return ""
    return ("## Training settings\n\nThe `nano-gpt train` settings of the run, as the checkpoint recorded them.\n\n"
            + _table(settings))


def _hardware_section(run: dict[str, Any]) -> str:
    hardware: list[tuple[str, str]] = []
    if run.get("device") is not None:
        hardware.append(("Device", f"`{run['device']}`"))
    if run.get("dtype") is not None:
        hardware.append(("Precision", f"`{run['dtype']}`"))
    if _int(run.get("world_size")):
        hardware.append(("Processes", str(run["world_size"])))
    if run.get("nano_gpt_version"):
        hardware.append(("nano-gpt", str(run["nano_gpt_version"])))
    return "## Hardware\n\n" + _table(hardware) if hardware else ""


def _usage_section(c: GPTConfig, model_ref: str) -> str:
    new_tokens = max(1, min(30, c.block_size - 12))  # the prompt is 12 tokens
    return (
        "## Usage\n\nWith `transformers`:\n\n```python\nfrom transformers import pipeline\n\n"
        f"generate = pipeline(\"text-generation\", model=\"{model_ref}\")\n"
        f"print(generate(\"{SAMPLE_PROMPT}\", max_new_tokens={new_tokens}, do_sample=True)[0][\"generated_text\"])\n"
        "```\n\nWith nano-gpt:\n\n```bash\n"
        f"nano-gpt sample --pretrained={model_ref} \"{SAMPLE_PROMPT}\"\n```"
    )


def read_model_card(path: str | Path) -> str:
    """A user's own card (`--model-card=FILE`), as text; a missing or unreadable file is a user error."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a folder, or a device such as /dev/zero that reads forever
            raise NanoGPTError(f"--model-card {path} is not a file; pass a Markdown file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NanoGPTError(f"--model-card {path} is not UTF-8 text; pass a Markdown file") from e
    except OSError as e:
        raise NanoGPTError(f"cannot read --model-card {path} ({e.strerror or e})") from e
