"""`nano-gpt sample`: continue a prompt."""

import codecs
import sys
from typing import Annotated, Optional

import torch
import typer

from nano_gpt.cli.common import CheckpointOption, DeviceOption, PretrainedOption, load_model
from nano_gpt.devices import resolve_device
from nano_gpt.errors import NanoGPTError
from nano_gpt.generate import generate
from nano_gpt.tokenizer import get_tokenizer


def sample(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "Hello, I'm a language model,",
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    device: DeviceOption = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same text on the same device.")] = None,
    max_length: Annotated[int, typer.Option(help="Total tokens per sequence, prompt included.")] = 30,
    num_sequences: Annotated[int, typer.Option(min=1, help="How many continuations to sample.")] = 5,
    temperature: Annotated[float, typer.Option(min=0.0, help="Softmax temperature; 0 is greedy.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Sample from the k most likely tokens.")] = 50,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Nucleus sampling: the smallest set of tokens holding this much probability.")] = None,
    greedy: Annotated[bool, typer.Option(help="Always take the most likely token.")] = False,
) -> None:
    """Sample continuations of PROMPT from pretrained GPT-2 weights (default gpt2) or a training checkpoint.

    Prints one `> ` line per sequence; with --num-sequences=1 the text streams as it is generated.
    """
    torch_device = resolve_device(device)
    tokenizer = get_tokenizer()
    prompt_tokens = tokenizer.encode_ordinary(prompt)
    model = load_model(pretrained, checkpoint)
    block_size = model.config.block_size
    if not prompt_tokens:
        raise NanoGPTError("the prompt is empty; pass some text to continue")
    if len(prompt_tokens) >= block_size:
        raise NanoGPTError(f"the prompt is {len(prompt_tokens)} tokens but the model's context is {block_size}; shorten it")
    if max_length <= len(prompt_tokens):
        raise NanoGPTError(f"--max-length={max_length} must be larger than the prompt's {len(prompt_tokens)} tokens")
    if max_length > block_size:
        raise NanoGPTError(f"--max-length={max_length} exceeds the model's context of {block_size} tokens; lower it")
    model.to(torch_device)
    generator = torch.Generator(torch_device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    idx = torch.tensor([prompt_tokens] * num_sequences, dtype=torch.long, device=torch_device)  # (B, T)

    on_token = None
    if num_sequences == 1:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        sys.stdout.write("> " + prompt)

        def on_token(token: torch.Tensor) -> None:
            t = int(token[0])
            if t != tokenizer.eot_token:
                sys.stdout.write(decoder.decode(tokenizer.decode_single_token_bytes(t)))
                sys.stdout.flush()

    sequences = generate(
        model, idx, max_length - len(prompt_tokens), temperature=temperature, top_k=top_k, top_p=top_p,
        greedy=greedy, generator=generator, on_token=on_token,
    )
    if num_sequences == 1:
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    else:
        for tokens in sequences:
            print("> " + tokenizer.decode(tokens))
