"""Feed prepared token shards to training as (x, y) batches, through numpy memmaps.

The shards of a split read as one token stream, so a batch can cross a shard boundary. Step k of rank r
reads the window of B * T + 1 tokens starting at (k * world_size + r) * B * T: ranks read disjoint windows
that together are the windows one process would read. When the next step's windows would run past the end,
the next epoch starts from the beginning.

With `shuffle`, each epoch reads the shards, and the documents within each shard, in an order drawn
from (seed, epoch): with a fixed order every epoch repeats the same sequence of batches, which makes the
loss oscillate on multi-epoch runs. (A document that runs across a shard boundary is two pieces here.)
The position is two ints, the epoch and the tokens read in it by all ranks together, so a checkpoint
saved by rank 0 restores every rank, and a resumed run sees exactly the batches it would have seen.
"""

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from nano_gpt.data.shards import manifest_tokenizer, shard_dtype, split_dir, verify_split
from nano_gpt.errors import NanoGPTError

logger = logging.getLogger(__name__)

SCAN_TOKENS = 1 << 24  # documents are found by scanning a shard in chunks, keeping memory flat
CACHED_SHARDS = 4  # shards whose shuffled document order is kept; a batch rarely spans more


class ShardLoader:
    """(x, y) int64 CPU batches of shape (micro_batch_size, sequence_length) from a prepared split.

    The split is verified first (`shards.verify_split`), so a corrupt dataset stops a run before its first step.
    """

    def __init__(self, dataset_dir: Path, dataset: str, split: str, micro_batch_size: int, sequence_length: int,
                 rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0,
                 tokenizer: str = "gpt2") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.micro_batch_size, self.sequence_length = micro_batch_size, sequence_length
        self.rank, self.world_size, self.shuffle, self.seed = rank, world_size, shuffle, seed
        self.manifest = verify_split(dataset_dir, dataset, split, tokenizer)  # fails here, before step 0, if corrupt
        self.split = split
        # The shards' hashes in order, in short: what a checkpoint records to notice shards changed under it.
        self.fingerprint = hashlib.sha256(" ".join(s["sha256"] for s in self.manifest["shards"]).encode()).hexdigest()[:16]
        self.tokenizer = manifest_tokenizer(self.manifest)  # the record: what the token ids mean
        self._eot = self.tokenizer.get("eot_token")  # where documents start, for shuffling; None: one per shard
        directory = split_dir(dataset_dir, dataset, split, tokenizer)
        dtype = shard_dtype(self.manifest)
        self._shards = [np.memmap(directory / s["file"], dtype=dtype, mode="r") for s in self.manifest["shards"]]
        self.total_tokens = sum(len(s) for s in self._shards)
        self._window = micro_batch_size * sequence_length
        self._stride = self._window * world_size  # tokens all ranks read per step
        if self._stride + 1 > self.total_tokens:
            raise NanoGPTError(
                f"the {split} split of {dataset!r} has {self.total_tokens:,} tokens, fewer than one step needs "
                f"(micro batch {micro_batch_size} x sequence {sequence_length} x world size {world_size} + 1 = "
                f"{self._stride + 1:,}); lower the batch size or sequence length, or prepare a larger dataset"
            )
        self.steps_per_epoch = (self.total_tokens - 1) // self._stride
        self.reset()

    def reset(self) -> None:
        """Back to the first batch of the first epoch."""
        self._seek(0, 0)

    def _seek(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position
        n = len(self._shards)
        self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        self._starts = np.cumsum([0] + [len(self._shards[s]) for s in self._order])  # of each shard in the epoch
        self._documents: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self._stride + 1 > self.total_tokens:
            self._seek(self.epoch + 1, 0)
        window = self._read(self.position + self.rank * self._window, self._window + 1)
        self.position += self._stride
        tokens = torch.from_numpy(window.astype(np.int64))
        x = tokens[:-1].view(self.micro_batch_size, self.sequence_length)  # (B, T)
        y = tokens[1:].view(self.micro_batch_size, self.sequence_length)  # (B, T)
        return x, y

    def state_dict(self) -> dict[str, int | str]:
        return {"epoch": self.epoch, "position": self.position, "shards": self.fingerprint}

    def load_state_dict(self, state: dict[str, int | str]) -> None:
        saved = state.get("shards")  # absent from checkpoints written before it was recorded
        if isinstance(saved, str) and saved != self.fingerprint:
            logger.warning("the %s shards changed since the checkpoint was written (prepared again, or another "
                           "corpus): the run goes on, from the same position in the new token stream, but will not "
                           "match the interrupted one", self.split)
        self._seek(int(state["epoch"]), int(state["position"]))

    def _read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of this epoch's stream."""
        parts = []
        while n > 0:
            k = int(np.searchsorted(self._starts, start, side="right")) - 1
            shard, offset = int(self._order[k]), start - int(self._starts[k])
            take = min(n, len(self._shards[shard]) - offset)
            parts.append(self._read_shard(shard, offset, take) if self.shuffle else self._shards[shard][offset:offset + take])
            start, n = start + take, n - take
        return np.concatenate(parts)

    def _read_shard(self, shard: int, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of `shard` with its documents in this epoch's order."""
        starts, ends = self._shuffled_documents(shard)  # ends: where each document ends in the shuffled shard
        parts = []
        while n > 0:
            d = int(np.searchsorted(ends, start, side="right"))
            offset = start - (int(ends[d - 1]) if d else 0)
            take = min(n, int(ends[d]) - start)
            parts.append(self._shards[shard][starts[d] + offset:starts[d] + offset + take])
            start, n = start + take, n - take
        return np.concatenate(parts)

    def _shuffled_documents(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._documents:
            tokens = self._shards[shard]
            found = [] if self._eot is None else [np.flatnonzero(tokens[i:i + SCAN_TOKENS] == self._eot) + i
                                                  for i in range(0, len(tokens), SCAN_TOKENS)]
            starts = np.unique(np.concatenate([[0]] + found)).astype(np.int64)
            lengths = np.diff(starts, append=len(tokens))
            order = np.random.default_rng([self.seed, self.epoch, shard]).permutation(len(starts))
            if len(self._documents) >= CACHED_SHARDS:
                del self._documents[next(iter(self._documents))]
            self._documents[shard] = (starts[order], np.cumsum(lengths[order]))
        return self._documents[shard]
