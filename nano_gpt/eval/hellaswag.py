"""HellaSwag: pick the most likely of four endings, scored as in Karpathy's GPT-2 reproduction.

A candidate is the context's tokens followed by the ending's tokens (the ending with a leading
space); its loss is the cross-entropy over the ending's tokens only. `acc` picks the ending with the
lowest total loss, `acc_norm` the lowest mean loss per token. Under this scheme OpenAI's GPT-2 124M
scores about 0.2955 acc_norm on the 10,042 validation examples.

Scoring gives the same losses as running each candidate through the model on its own (up to float
rounding), with less than half the work of the reproduction's one example per (4, T) batch:
- an example is packed into one row, the context once and then its four endings, each ending at the
  positions it would have alone and, through the attention mask, seeing only the context and itself;
- many examples share a forward pass, sorted by length and right-padded (padding is masked out of
  attention and of the loss);
- the vocabulary projection, a third of GPT-2 small's compute, runs only where an ending token is
  predicted.
"""

import codecs
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from nano_gpt.cache import cached_download
from nano_gpt.runtime import autocast
from nano_gpt.distributed import all_reduce_sum
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import parse_json
from nano_gpt.model import GPT
from nano_gpt.tokenizer import Tokenizer, check_ids_fit, get_tokenizer

logger = logging.getLogger(__name__)

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_CACHE_PATH = "hellaswag/hellaswag_val.jsonl"  # under nano_gpt.cache.cache_dir()
NUM_ENDINGS = 4
PACKED_CACHE_SIZE = 16_384  # packed examples remembered across evaluations: the whole validation set
MAX_PADDING = 0.1  # the share of a batch's longest row that a shorter row may leave as padding
_LABELS = frozenset(str(i) for i in range(NUM_ENDINGS))
_FORMAT = 'expected one JSON object per line: {"ctx": "...", "endings": [4 strings], "label": 0-3}'


@dataclass(frozen=True)
class HellaSwagExample:
    ctx: str
    endings: tuple[str, ...]  # NUM_ENDINGS of them
    label: int  # index of the true ending


@dataclass(frozen=True)
class ExampleScore:
    """One example's candidate losses; `index` is its position in the list that was evaluated."""

    index: int
    label: int
    losses: tuple[float, ...]  # total cross-entropy over each ending's tokens
    mean_losses: tuple[float, ...]  # the same per token

    @property
    def pred(self) -> int:
        return min(range(len(self.losses)), key=self.losses.__getitem__)

    @property
    def pred_norm(self) -> int:
        return min(range(len(self.mean_losses)), key=self.mean_losses.__getitem__)


@dataclass(frozen=True)
class HellaSwagResult:
    total: int
    correct: int
    correct_norm: int

    @property
    def acc(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.total if self.total else 0.0


def _parse_line(line: bytes, where: str) -> HellaSwagExample:
    obj = parse_json(line, where, _FORMAT)
    if not isinstance(obj, dict):
        raise NanoGPTError(f"{where}: not a JSON object; {_FORMAT}")
    ctx, endings, label = obj.get("ctx"), obj.get("endings"), obj.get("label")
    if not isinstance(ctx, str):
        raise NanoGPTError(f"{where}: no string 'ctx'; {_FORMAT}")
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise NanoGPTError(f"{where}: 'endings' is not a list of strings; {_FORMAT}")
    if len(endings) != NUM_ENDINGS:
        raise NanoGPTError(f"{where}: {len(endings)} endings, expected {NUM_ENDINGS}; {_FORMAT}")
    # The Hugging Face copy of the dataset stores labels as strings. Only "0" to "3": str.isdigit() also
    # passes "²" (which int() refuses) and 5000-digit strings (which int() refuses to convert).
    if isinstance(label, str) and label in _LABELS:
        label = int(label)
    if type(label) is not int or not 0 <= label < NUM_ENDINGS:
        shown = repr(label) if len(repr(label)) <= 40 else repr(label)[:37] + "..."
        raise NanoGPTError(f"{where}: label {shown} is out of range; expected an integer from 0 to {NUM_ENDINGS - 1}")
    return HellaSwagExample(ctx, tuple(endings), label)


def load_hellaswag(path: str | Path | None = None, limit: int | None = None) -> list[HellaSwagExample]:
    """The first `limit` examples (default all) of a HellaSwag jsonl file.

    With no `path`, the official validation set (10,042 examples) from the dataset's GitHub
    repository, downloaded once into the project cache. A malformed file is a one-line
    NanoGPTError naming the file and line.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    cached = path is None
    path = cached_download(HELLASWAG_URL, HELLASWAG_CACHE_PATH) if path is None else Path(path)
    if path.is_dir():
        raise NanoGPTError(f"HellaSwag file {path} is a folder; pass a jsonl file with one example per line")
    if not path.is_file():
        found = "is not a regular file (a device, a pipe or a socket)" if path.exists() else "not found"
        raise NanoGPTError(f"HellaSwag file {path} {found}; pass a jsonl file with one example per line")
    examples: list[HellaSwagExample] = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if number == 1:  # a byte-order mark, as some editors write: read as prepare_dataset reads it
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    examples.append(_parse_line(line, f"{path}, line {number}"))
                    if len(examples) == limit:
                        break
        if not examples:
            raise NanoGPTError(f"{path}, line 1: the file is empty; {_FORMAT}")
    except NanoGPTError as e:
        if cached:  # damaged on disk or cut short by a lost connection: the fix is a fresh download
            raise NanoGPTError(f"{e}; it is the cached download: delete {path} so it is downloaded again") from e
        raise
    return examples


def _tokenize(example: HellaSwagExample, block_size: int, enc: Tokenizer) -> tuple[list[int], list[list[int]]]:
    """Context tokens and each ending's tokens, cut so that the context plus any ending fits in block_size.

    An empty context becomes <|endoftext|>, GPT-2's document start, so the first ending token has
    something to be predicted from. Endings longer than the window lose their tail (real ones are far
    shorter); then the context loses its head, keeping at least one token.
    """
    ctx = enc.encode_ordinary(example.ctx)
    if not ctx and enc.eot_token is None:
        raise NanoGPTError("a HellaSwag example has an empty context, and the tokenizer has no end-of-text token to "
                           "stand for it")
    ctx = ctx or [enc.eot_token]
    endings = [enc.encode_ordinary(" " + ending)[: block_size - 1] for ending in example.endings]
    return ctx[-(block_size - max(map(len, endings))) :], endings


@dataclass(frozen=True)
class _PackedRow:
    """An example as one row: the context, then each ending at the positions it would have alone."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]  # 0 for the context, k + 1 for ending k
    sources: list[int]  # for each ending token (in row order), the index of the token predicting it
    ctx_len: int
    ending_lengths: list[int]

    @classmethod
    def pack(cls, ctx: list[int], endings: list[list[int]]) -> "_PackedRow":
        row = cls(list(ctx), list(range(len(ctx))), [0] * len(ctx), [], len(ctx), [len(e) for e in endings])
        for k, ending in enumerate(endings):
            start = len(row.tokens)
            row.tokens.extend(ending)
            row.positions.extend(range(len(ctx), len(ctx) + len(ending)))
            row.segments.extend([k + 1] * len(ending))
            row.sources.extend([len(ctx) - 1, *range(start, start + len(ending) - 1)])  # first: the context's last
        return row


@functools.lru_cache(maxsize=PACKED_CACHE_SIZE)
def _packed(example: HellaSwagExample, block_size: int, enc: Tokenizer) -> _PackedRow:
    """An example tokenized and packed, remembered: training evaluates the same examples at every eval
    (tokenizing all 10,042 again took about a second each time)."""
    return _PackedRow.pack(*_tokenize(example, block_size, enc))


def _score_batch(model: GPT, rows: list[_PackedRow], device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """Total loss of each ending, (B, NUM_ENDINGS), for B packed examples in one forward pass."""
    B, T = len(rows), max(len(r.tokens) for r in rows)
    idx = torch.zeros(B, T, dtype=torch.long)  # right padding: token 0 at position 0 in segment -1
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    sources, targets, candidates = [], [], []  # flat over the batch's ending tokens
    for b, r in enumerate(rows):
        n = len(r.tokens)
        idx[b, :n], pos[b, :n], seg[b, :n] = torch.tensor(r.tokens), torch.tensor(r.positions), torch.tensor(r.segments)
        sources += [b * T + i for i in r.sources]
        targets += r.tokens[r.ctx_len :]
        candidates += [b * NUM_ENDINGS + s - 1 for s in r.segments[r.ctx_len :]]
    idx, pos, seg = idx.to(device), pos.to(device), seg.to(device)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)
    same_or_ctx = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # (B, T, T): query i sees key j
    mask = (causal & same_or_ctx)[:, None]  # (B, 1, T, T); padding sees only the context and itself
    with autocast(device, dtype):
        h = model.hidden_states(idx, positions=pos, mask=mask).flatten(0, 1)  # (B * T, C)
        logits = model.lm_head(h[torch.tensor(sources, device=device)])  # (M, V) for the M ending tokens
    token_losses = F.cross_entropy(logits.float(), torch.tensor(targets, device=device), reduction="none")  # (M,)
    losses = torch.zeros(B * NUM_ENDINGS, device=device)
    losses.index_add_(0, torch.tensor(candidates, device=device), token_losses)
    return losses.view(B, NUM_ENDINGS)


def _similar_length_batches(rows: list[tuple[int, _PackedRow]], batch_size: int) -> Iterator[list[tuple[int, _PackedRow]]]:
    """Runs of at most `batch_size` (index, row) pairs from `rows`, sorted longest first, cut where a
    row would be more than MAX_PADDING padding: on a CPU padding costs as much as real tokens."""
    batch: list[tuple[int, _PackedRow]] = []
    for item in rows:
        if batch and (len(batch) == batch_size or len(item[1].tokens) < (1 - MAX_PADDING) * len(batch[0][1].tokens)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@torch.inference_mode()
def evaluate_hellaswag(
    model: GPT | DistributedDataParallel,
    examples: Sequence[HellaSwagExample],
    device: torch.device | str,
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_result: Callable[[ExampleScore], None] | None = None,
    tokenizer: Tokenizer | None = None,
) -> HellaSwagResult:
    """Accuracy on `examples` of a model already on `device`, tokenized by `tokenizer` (default GPT-2's).

    Up to `batch_size` examples of similar length share a forward pass. Under DDP each rank scores
    examples i with i % world_size == rank and the counts are summed over ranks. `on_result` sees
    each example's scores as they come (not in input order); the running acc_norm is logged at DEBUG.
    """
    device = torch.device(device)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    block_size = model.config.block_size
    enc = tokenizer or get_tokenizer()
    rows = [(i, _packed(examples[i], block_size, enc)) for i in range(rank, len(examples), world_size)]
    # Said once: an ending longer than the context loses its tail (_tokenize), so its example scores on less.
    # A token is at least one character, so only endings that long can be.
    cut = [i + 1 for i in range(rank, len(examples), world_size) if any(
        len(ending) + 1 > block_size - 1 and len(enc.encode_ordinary(" " + ending)) > block_size - 1
        for ending in examples[i].endings)]
    if cut:
        logger.warning("%d HellaSwag example%s (the first: %d) ha%s an ending longer than the model's context of %d "
                       "tokens; its tail was cut, so %s scored on part of it", len(cut), "s" * (len(cut) > 1), cut[0],
                       "ve" if len(cut) > 1 else "s", block_size, "they are" if len(cut) > 1 else "it is")
    for i, row in rows:
        check_ids_fit(row.tokens, model.config.vocab_size, enc, f"HellaSwag example {i + 1}")
    rows.sort(key=lambda item: -len(item[1].tokens))  # the longest first, so running out of memory shows at once
    total = correct = correct_norm = 0
    for batch in _similar_length_batches(rows, batch_size):
        losses = _score_batch(model, [row for _, row in batch], device, dtype).tolist()
        for (i, row), loss in zip(batch, losses):
            means = tuple(s / n for s, n in zip(loss, row.ending_lengths))
            score = ExampleScore(i, examples[i].label, tuple(loss), means)
            total += 1
            correct += score.pred == score.label
            correct_norm += score.pred_norm == score.label
            logger.debug("hellaswag: accuracy: %.4f | total: %d | correct: %d", correct_norm / total, total, correct_norm)
            if on_result is not None:
                on_result(score)
    model.train(was_training)
    with torch.inference_mode(False):  # collectives write in place, which inference tensors forbid
        counts = all_reduce_sum(torch.tensor([total, correct, correct_norm], dtype=torch.long, device=device))
    total, correct, correct_norm = counts.tolist()
    return HellaSwagResult(total, correct, correct_norm)
