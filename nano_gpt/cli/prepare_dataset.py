"""`nano-gpt prepare_dataset`: tokenize a corpus into token shards (GPT-2's BPE, characters, or any tokenizer)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nano_gpt.defaults import DEFAULT_DATASET_DIR, DEFAULT_TOKENS_PER_SHARD
from nano_gpt.errors import NanoGPTError


def prepare_dataset(
    dataset: Annotated[str, typer.Option(help="tinyshakespeare, finewebedu, hf:OWNER/NAME[:CONFIG] (any Hugging Face dataset, streamed), or local files: a .txt, .jsonl or .parquet file, a glob such as './corpus/*.txt', or a folder.")],
    splits: Annotated[str, typer.Option(help="Comma-separated splits to prepare.")] = "train,validation",
    dataset_dir: Annotated[Path, typer.Option(help="Where the shards go: DATASET_DIR/<dataset>/<split>/.")] = DEFAULT_DATASET_DIR,
    tokenizer: Annotated[str, typer.Option(help="gpt2 (GPT-2's BPE), char (the corpus's sorted unique characters, as nanoGPT's shakespeare_char), or a tokenizer folder or Hugging Face Hub id. Each tokenizer's shards go to their own folder.")] = "gpt2",
    eot_token: Annotated[Optional[str], typer.Option(help="With a tokenizer folder or Hub id that has no end-of-sequence token: the token put between documents.")] = None,
    tokens_per_shard: Annotated[int, typer.Option(min=1, help="Tokens per shard file (uint16, 2 bytes each; uint32 for vocabularies over 65,536).")] = DEFAULT_TOKENS_PER_SHARD,
    validation_tokens: Annotated[Optional[int], typer.Option(min=0, help="For a corpus without a validation split (finewebedu, local files, most hf: datasets): how many leading tokens go to validation. Default: one shard; for local files 10% of their tokens, at most one shard.")] = None,
    text_column: Annotated[str, typer.Option(help="The text field of .jsonl, .parquet and hf: datasets.")] = "text",
    num_workers: Annotated[Optional[int], typer.Option(min=1, help="Tokenizer processes. Default: all cores.")] = None,
    force: Annotated[bool, typer.Option(help="Prepare splits again even if they are finished.")] = False,
    num_procs: Annotated[Optional[int], typer.Option(min=1, hidden=True)] = None,  # the seed's --num-workers
) -> None:
    """Tokenize DATASET (with GPT-2's tokenizer unless --tokenizer says otherwise) into shards plus a manifest per split.

    Each document is the end-of-text token followed by its tokens (a character vocabulary has none: documents follow each other). The manifest records the tokenizer, so training, sampling and export use it without being told. A killed run resumes where it stopped when run again; a finished split is kept unless --force. A second run on the same split waits for the first.
    """
    from nano_gpt.data import prepare_dataset as prepare

    if num_procs is not None and num_workers is not None and num_procs != num_workers:
        raise NanoGPTError(f"--num-procs={num_procs} and --num-workers={num_workers} disagree; pass one of them")
    num_workers = num_workers if num_procs is None else num_procs
    names = [s.strip() for s in splits.split(",") if s.strip()]
    prepared = prepare(dataset, names, dataset_dir=dataset_dir, tokens_per_shard=tokens_per_shard,
                       validation_tokens=validation_tokens, text_column=text_column, num_workers=num_workers,
                       force=force, tokenizer=tokenizer, eot_token=eot_token)
    for name, result in prepared.items():
        shards = len(result.manifest["shards"])
        note = " (already prepared)" if result.reused else ""
        print(f"{name}: {result.manifest['tokens']:,} tokens in {shards} shard{'s' * (shards != 1)} "
              f"at {result.directory}{note}")
