"""`nano-gpt export`: a training checkpoint or pretrained weights as a Hugging Face model folder."""

from pathlib import Path
from typing import Annotated

import typer

from nano_gpt.cli.common import CheckpointOption, DeviceOption, PretrainedOption, load_model
from nano_gpt.devices import resolve_device
from nano_gpt.export import export_model


def export(
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
    export_dir: Annotated[Path, typer.Option(help="The folder to write: new or empty, unless --force.")] = Path("export"),
    force: Annotated[bool, typer.Option(help="Replace a non-empty --export-dir, once the new one is complete.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Export a training checkpoint (or --pretrained weights) as a Hugging Face GPT-2 model folder.

    Writes model.safetensors in OpenAI's GPT-2 layout (vocabulary cut back to 50,257), config.json,
    generation_config.json and the tokenizer files.

    `transformers`, `nano-gpt sample --pretrained=FOLDER` and `hf upload` take the folder as it is.
    """
    torch_device = resolve_device(device)
    model = load_model(pretrained, checkpoint, default=None)
    folder = export_model(model, export_dir, force=force, device=torch_device)
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"exported to {folder}: {files}")
