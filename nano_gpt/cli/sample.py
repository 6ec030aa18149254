"""`nano-gpt sample`: continue a prompt."""

import codecs
import logging
import math
import sys
from typing import Annotated, Optional

import typer

from nano_gpt.cli.common import (
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    MetaOption,
    PretrainedOption,
    QuantizeOption,
    read_model,
)
from nano_gpt.config import SAMPLE_PROMPT
from nano_gpt.defaults import Quantize
from nano_gpt.errors import NanoGPTError
from nano_gpt.train.config import MAX_SEED

logger = logging.getLogger(__name__)

def sample(
    prompt: Annotated[Optional[list[str]], typer.Argument(help="Text to continue; several words need no quotes. "
                                                          f"Default: {SAMPLE_PROMPT!r} (a newline for a character-level model).", metavar="PROMPT", show_default=False)] = None,
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    meta: MetaOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = Quantize.none,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same text on the same device.")] = None,
    max_length: Annotated[int, typer.Option(help="Total tokens per sequence, prompt included; past the model's context "
                                                    "each token sees the last context-length tokens, as in nanoGPT.")] = 30,
    num_sequences: Annotated[int, typer.Option(min=1, help="How many continuations to sample.")] = 5,
    temperature: Annotated[float, typer.Option(min=0.0, help="Softmax temperature; 0 is greedy.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Sample from the k most likely tokens.")] = 50,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Nucleus sampling: the smallest set of tokens holding this much probability.")] = None,
    greedy: Annotated[bool, typer.Option(help="Always take the most likely token.")] = False,
    # The seed project's spellings, kept working for its users but out of --help.
    sample_num_sequences: Annotated[Optional[int], typer.Option(min=1, hidden=True)] = None,
    sample_max_length: Annotated[Optional[int], typer.Option(hidden=True)] = None,
    sample_seed: Annotated[Optional[int], typer.Option(hidden=True)] = None,
) -> None:
    """Sample continuations of PROMPT from pretrained GPT-2 weights (default gpt2) or a training checkpoint.

    Prints one `> ` line per sequence; with --num-sequences=1 the text streams as it is generated.
    """
    import torch

    from nano_gpt.generate import for_inference, generate
    from nano_gpt.memory import check_fits, decode_bytes
    from nano_gpt.runtime import Runtime
    from nano_gpt.tokenizer import CharTokenizer, check_ids_fit

    num_sequences = num_sequences if sample_num_sequences is None else sample_num_sequences
    max_length = max_length if sample_max_length is None else sample_max_length
    seed = seed if sample_seed is None else sample_seed
    if seed is not None and not 0 <= seed <= MAX_SEED:  # torch.Generator's range
        flag = "--seed" if sample_seed is None else "--sample-seed"
        raise NanoGPTError(f"{flag}={seed} must be between 0 and 2**64 - 1")
    if not math.isfinite(temperature):
        raise NanoGPTError(f"--temperature={temperature} must be a finite number (0 is greedy)")
    loaded = read_model(pretrained, checkpoint, meta=meta)
    model, tokenizer = loaded.model, loaded.tokenizer()
    # A character-level model starts from a newline by default, as nanoGPT's sample.py does.
    prompt = " ".join(prompt) if prompt else "\n" if isinstance(tokenizer, CharTokenizer) else SAMPLE_PROMPT
    prompt_tokens = tokenizer.encode_ordinary(prompt)
    if not prompt_tokens:
        raise NanoGPTError("the prompt is empty; pass some text to continue")
    check_ids_fit(prompt_tokens, model.config.vocab_size, tokenizer, "the prompt")
    if max_length <= len(prompt_tokens):
        raise NanoGPTError(f"--max-length={max_length} must be larger than the prompt's {len(prompt_tokens)} tokens")
    runtime = Runtime.build(device, dtype, "decode", model.config)
    logger.info("sampling on %s", runtime.describe())
    for_inference(model.to(runtime.device), runtime.dtype, quantize)  # each token streams every weight: fewest bytes
    torch_device = runtime.device
    # Before the prompt is copied num_sequences times: billions of sequences must be one line, not an OOM kill.
    sorts = not (greedy or temperature == 0) and (top_k is None or top_k >= tokenizer.n_vocab)
    needed = decode_bytes(model.config, num_sequences, len(prompt_tokens), max_length, runtime.dtype,
                          tokenizer.n_vocab, sorts)
    check_fits(needed, torch_device, f"sampling {num_sequences:,} sequences of {max_length} tokens",
               "lower --num-sequences or --max-length")
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
        greedy=greedy, generator=generator, on_token=on_token, eos_token=tokenizer.eot_token, vocab_size=tokenizer.n_vocab,
    )
    if num_sequences == 1:
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    else:
        for tokens in sequences:
            print("> " + tokenizer.decode(tokens))
