"""`nano-gpt export`: a training checkpoint or pretrained weights as a Hugging Face model folder or a GGUF file."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nano_gpt.cli.common import CheckpointOption, DeviceOption, MetaOption, PretrainedOption, read_model
from nano_gpt.defaults import DEFAULT_LICENSE, ExportFormat, GgufType
from nano_gpt.errors import NanoGPTError


def export(
    checkpoint: CheckpointOption = None,
    meta: MetaOption = None,
    pretrained: PretrainedOption = None,
    # A string, not a Path: Path("") is ".", and an empty --export-dir= must be refused, not read as here.
    export_dir: Annotated[str, typer.Option(metavar="FOLDER", help="The folder to write: new or empty, unless --force.")
                          ] = "export",
    force: Annotated[bool, typer.Option(help="Replace a previous export in --export-dir, once the new one is complete. "
                                             "A folder holding other files is never replaced.")] = False,
    device: DeviceOption = "cpu",
    model_card: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Your own README.md instead of the "
                                                       "generated model card.")] = None,
    license: Annotated[str, typer.Option(help="The license in the model card's metadata: one of the Hub's "
                                              "identifiers (mit, apache-2.0, cc-by-4.0, ...) or other:NAME.")] = DEFAULT_LICENSE,
    push_to_hub_repo: Annotated[Optional[str], typer.Option("--push-to-hub", metavar="USER/REPO", help="Then upload "
                                "the folder to this Hugging Face Hub model repo (created if missing).")] = None,
    private: Annotated[bool, typer.Option(help="With --push-to-hub: create the repo private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="With --push-to-hub: the branch to push to (created if "
                                                         "missing); default main.")] = None,
    export_format: Annotated[ExportFormat, typer.Option("--format", help="hf: a Hugging Face model folder (--export-dir); "
                      "gguf: one GGUF file for llama.cpp's gpt2 architecture (--output).")] = ExportFormat.hf,
    output: Annotated[Optional[Path], typer.Option(metavar="FILE", help="With --format=gguf: the file to write "
                                                   "(an existing one only with --force).")] = None,
    gguf_type: Annotated[GgufType, typer.Option(help="With --format=gguf: the matrices' type (vectors stay f32); "
                                                "q8_0 is llama.cpp's 8-bit blocks.")] = GgufType.f16,
) -> None:
    """Export a training checkpoint (or --pretrained weights) as a Hugging Face GPT-2 model folder.

    Writes model.safetensors in OpenAI's GPT-2 layout (vocabulary cut back to the tokenizer's: 50,257 for GPT-2's), config.json,
    generation_config.json, the files of the tokenizer the model was trained with (GPT-2's, a character vocabulary, or its own) and a model card, README.md (with training_log.png when
    the run's train_log.jsonl sits beside the checkpoint).

    `transformers`, `nano-gpt sample --pretrained=FOLDER` and `hf upload` take the folder as it is;
    --push-to-hub=USER/REPO uploads it once it is complete.

    --format=gguf --output=FILE writes one GGUF file (tokenizer included) that llama.cpp runs as it is
    (`llama-cli -m FILE`); needs `pip install 'nano-gpt[gguf]'`.
    """
    if export_format == ExportFormat.gguf:
        _export_gguf(checkpoint, pretrained, output, gguf_type, force, push_to_hub_repo, model_card)
        return
    if output is not None:
        raise NanoGPTError("--output goes with --format=gguf; a Hugging Face folder is written to --export-dir")
    from nano_gpt.export import export_model, prepare_export_dir
    from nano_gpt.hub import check_repo_id, push_to_hub
    from nano_gpt.model_card import (exported_parameters, facts_from_checkpoint, facts_from_pretrained, parse_license,
                                     read_model_card)
    from nano_gpt.runtime import resolve_device
    from nano_gpt.tokenizer import tokenizer_record

    if (private or revision) and push_to_hub_repo is None:
        raise NanoGPTError("--private and --revision go with --push-to-hub=USER/REPO")
    if push_to_hub_repo is not None:
        check_repo_id(push_to_hub_repo)
    parse_license(license)
    card = read_model_card(model_card) if model_card is not None else None
    prepare_export_dir(export_dir, force)  # before a model load that may take minutes
    torch_device = resolve_device(device)
    loaded = read_model(pretrained, checkpoint, default=None, meta=meta)
    model, tokenizer = loaded.model, loaded.tokenizer()  # the tokenizer it was trained with goes with it
    facts = facts_from_checkpoint(loaded) if checkpoint is not None else facts_from_pretrained(pretrained, model)
    facts.tokenizer = tokenizer_record(tokenizer)
    facts.parameters = exported_parameters(model, tokenizer.n_vocab)
    folder = export_model(model, export_dir, force=force, device=torch_device, facts=facts, model_card=card,
                          repo_id=push_to_hub_repo, license=license, tokenizer=tokenizer)
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"exported to {folder}: {files}")
    if push_to_hub_repo is not None:
        url = push_to_hub(folder, push_to_hub_repo, private=private, revision=revision)
        print(f"pushed to {url}")


def _export_gguf(checkpoint: Optional[Path], pretrained: Optional[str], output: Optional[Path], gguf_type: GgufType,
                 force: bool, push_to_hub_repo: Optional[str], model_card: Optional[Path]) -> None:
    if output is None:
        raise NanoGPTError("--format=gguf needs --output=FILE, such as --output=model.gguf")
    if push_to_hub_repo is not None or model_card is not None:
        raise NanoGPTError("--push-to-hub and --model-card go with a Hugging Face folder (--format=hf)")
    from nano_gpt.gguf_export import check_output, export_gguf
    from nano_gpt.tokenizer import is_gpt2

    check_output(output, force)

    loaded = read_model(pretrained, checkpoint, default=None)
    if not is_gpt2(loaded.tokenizer()):  # the file carries GPT-2's tokenizer
        raise NanoGPTError(f"{pretrained} has a tokenizer of its own; GGUF export writes GPT-2 models")
    name = Path(pretrained).name if pretrained else (checkpoint.stem if checkpoint else "nano-gpt")
    path = export_gguf(loaded.model, output, gguf_type.value, name=name)
    print(f"exported to {path} (GGUF, llama.cpp gpt2, {gguf_type.value}, {path.stat().st_size / 2**20:,.1f} MiB)")
