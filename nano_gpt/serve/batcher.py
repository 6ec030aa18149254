"""Continuous batching: every running request decodes in one batch, and a new one joins at the next step.

One worker thread owns the model. Each request (a `Job`: one prompt, `n` continuations) is prefilled on
its own, exactly as `nano-gpt sample` prefills it, then its `n` rows join the running batch: one decode
step computes the next token of every row of every job, each row at its own position in a shared KV
cache. Each job samples its rows with its own generator through `sample_next_token`, so a seeded request
draws the same tokens as `nano-gpt sample --seed` does alone.

The running rows are kept packed at the front of the cache: a finished job's rows are filled by moving
the rows after it down, so a step never computes a free slot. The cache grows (in steps of 64 positions)
to what the running jobs need, and is dropped when the batch empties.
"""

import codecs
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nano_gpt.generate import sample_next_token
from nano_gpt.model import GPT
from nano_gpt.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

CACHE_STEP = 64  # the cache's length grows in these steps
PREFILL_SPREAD = 2  # prompts prefilled together differ in length by at most this factor


class QueueFull(Exception):
    """More jobs are waiting than the batcher accepts; the caller answers 429."""


@dataclass(frozen=True)
class Sampling:
    """How a job picks tokens: `sample_next_token`'s arguments, and the seed of its generator."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class TokenLogprobs:
    """A token's log-probability under the model, and the `logprobs` most likely alternatives."""

    token: int
    logprob: float | None  # None for a prompt's first token, which nothing predicts
    top: list[tuple[int, float]]


@dataclass
class RowDelta:
    """What one continuation gained in one step."""

    text: str = ""
    tokens: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (end of text or a stop string) or "length", once


@dataclass
class Event:
    """A message from the worker to a job's consumer: the prompt's logprobs (echo), each step's deltas (one
    per row), or the end (`done`, with an `error` message if the job failed)."""

    prompt_logprobs: list[TokenLogprobs] | None = None
    deltas: list[RowDelta] | None = None
    done: bool = False
    error: str | None = None


class _Row:
    """One continuation's text so far, decoded incrementally (a character may span tokens)."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0  # characters of `text` already handed out
        self.tokens = 0
        self.finish_reason: str | None = None


@dataclass(eq=False)
class Job:
    """One prompt to continue `n` times by up to `max_tokens` tokens; `deliver` receives its events on the
    worker thread (it must not block)."""

    prompt: list[int]
    n: int
    max_tokens: int
    sampling: Sampling
    deliver: Callable[[Event], None]
    logprobs: int | None = None  # per generated token, this many alternatives (None: no logprobs)
    echo_logprobs: bool = False  # the prompt's own token logprobs (OpenAI's echo with logprobs)
    stop: tuple[str, ...] = ()
    cancelled: bool = False  # set by the consumer (a client gone): the worker drops the job at the next step
    # Worker state
    rows: list[_Row] = field(default_factory=list)
    generator: torch.Generator | None = None
    next_token: torch.Tensor | None = None  # (n,) the tokens to feed at the next step
    finished: torch.Tensor | None = None  # (n,) rows that ended (their later draws are discarded)
    generated: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(row.tokens for row in self.rows)

    def cancel(self) -> None:
        self.cancelled = True


class _SlotCache:
    """One layer's keys and values for the batch, written at each row's own position (duck-types `KVCache`
    for `CausalSelfAttention`)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, rows: int, length: int) -> None:
        self.k, self.v, self.rows, self.length = k, v, rows, length

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.arange(self.rows, device=k.device)
        self.k[batch, :, input_pos] = k[:, :, 0]  # (B, nh, hs) at each row's position
        self.v[batch, :, input_pos] = v[:, :, 0]
        return self.k[: self.rows, :, : self.length], self.v[: self.rows, :, : self.length]  # (B, nh, L, hs)


class Batcher:
    """Runs jobs on `model` in a worker thread, batching every running job's rows into each decode step.

    At most `max_batch_size` rows decode together; at most `max_queue` jobs wait for room, and `submit`
    raises `QueueFull` past that.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch_size: int = 16, max_queue: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.device = model.transformer.wte.weight.device
        self.vocab_size = min(tokenizer.n_vocab, model.config.vocab_size)
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._k: list[torch.Tensor] = []  # per layer (max_batch_size, nh, length, hs)
        self._v: list[torch.Tensor] = []
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "steps": 0}

    # The consumer's side (any thread)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nano-gpt-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, jobs: list[Job]) -> None:
        """Queue `jobs` together, or none of them (`QueueFull`)."""
        for job in jobs:
            if not 1 <= job.n <= self.max_batch_size:
                raise ValueError(f"a job's n must be between 1 and {self.max_batch_size}, got {job.n}")
        with self._wake:
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting; try again shortly")
            self._pending.extend(jobs)
            self._wake.notify()

    def load(self) -> dict[str, int]:
        """Rows decoding and jobs waiting now, and counts of jobs ended so far."""
        with self._wake:
            return {"running_rows": sum(j.n for j in self._running), "waiting": len(self._pending), **self.stats}

    # The worker

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._pending and not self._running:
                        self._wake.wait()
                    if self._stopping:
                        break
                try:
                    self._admit()
                    if self._running:
                        self._step()
                except Exception as e:  # noqa: BLE001 - a bug or out of memory: fail these jobs, keep serving
                    logger.exception("generation failed")
                    for job in self._running:
                        job.deliver(Event(done=True, error=f"generation failed: {type(e).__name__}: {e}"))
                        self.stats["failed"] += 1
                    self._running.clear()
                    self._k, self._v = [], []
        for job in [*self._running, *self._pending]:
            job.deliver(Event(done=True, error="the server is shutting down"))

    def _rows_running(self) -> int:
        return sum(job.n for job in self._running)

    def _admit(self) -> None:
        """Prefill waiting jobs while their rows fit, in arrival order, those of similar length together."""
        while True:
            group: list[Job] = []
            with self._wake:
                rows = self._rows_running()
                while self._pending and rows + self._pending[0].n <= self.max_batch_size:
                    job = self._pending[0]
                    if group and not PREFILL_SPREAD * len(job.prompt) >= len(group[0].prompt) >= len(job.prompt) / PREFILL_SPREAD:
                        break  # far from the group's length: most of its pass would be padding
                    group.append(self._pending.popleft())
                    rows += job.n
            if not group:
                return
            for job in [j for j in group if j.cancelled]:
                self.stats["cancelled"] += 1
                job.deliver(Event(done=True))
            group = [j for j in group if not j.cancelled]
            if not group:
                continue
            try:
                self._prefill(group)
            except Exception as e:  # noqa: BLE001 - these jobs fail (out of memory, a bug); the others go on
                logger.exception("prefill failed")
                for job in group:
                    self.stats["failed"] += 1
                    job.deliver(Event(done=True, error=f"generation failed: {type(e).__name__}: {e}"))
                    if job in self._running:
                        self._remove(job)

    def _prefill(self, jobs: list[Job]) -> None:
        """The jobs' prompts through the model in one pass, their keys and values copied into the batch
        cache, and their first tokens drawn.

        Prompts are right-padded to the longest: causal attention keeps padding out of every real position,
        and the decode mask hides the cache positions it wrote until real tokens overwrite them. A job alone
        is prefilled exactly as `generate` prefills it, (n, T) rows with nothing padded.
        """
        rows = [job.prompt for job in jobs for _ in range(job.n)]
        T = max(map(len, rows))
        prompt = torch.zeros(len(rows), T, dtype=torch.long, device=self.device)  # (B, T) right-padded
        for r, ids in enumerate(rows):
            prompt[r, : len(ids)] = torch.tensor(ids, device=self.device)
        caches = self.model.new_kv_caches(len(rows), T)
        hidden = self.model.hidden_states(prompt, caches)  # (B, T, C)
        first = 0
        for job in jobs:
            n, length = job.n, len(job.prompt)
            job.rows = [_Row() for _ in range(n)]
            job.generator = torch.Generator(self.device)
            if job.sampling.seed is not None:
                job.generator.manual_seed(job.sampling.seed)
            else:
                job.generator.seed()
            if job.echo_logprobs:
                job.deliver(Event(prompt_logprobs=self._prompt_logprobs(job, hidden[first, :length])))
            if job.max_tokens == 0:
                self._finish(job, "length")
                first += n
                continue
            logits = self.model.lm_head(hidden[first : first + n, length - 1])  # (n, V)
            job.finished = torch.zeros(n, dtype=torch.bool, device=self.device)
            start = self._rows_running()
            self._reserve(start + n, length + job.max_tokens)
            for layer, cache in enumerate(caches):
                self._k[layer][start : start + n, :, :length] = cache.k[first : first + n, :, :length]
                self._v[layer][start : start + n, :, :length] = cache.v[first : first + n, :, :length]
            self._running.append(job)
            if self._sample(job, logits):
                self._remove(job)
            first += n

    def _prompt_logprobs(self, job: Job, hidden: torch.Tensor) -> list[TokenLogprobs]:
        logprobs = self.model.lm_head(hidden[:-1])[:, : self.vocab_size].float().log_softmax(-1)  # (T - 1, V)
        chosen = logprobs.gather(-1, torch.tensor(job.prompt[1:], device=self.device)[:, None])[:, 0].tolist()
        tops = self._top(logprobs, job.logprobs or 0)
        first = TokenLogprobs(job.prompt[0], None, [])
        return [first, *(TokenLogprobs(t, lp, top) for t, lp, top in zip(job.prompt[1:], chosen, tops))]

    @staticmethod
    def _top(logprobs: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
        if k == 0:
            return [[] for _ in range(logprobs.shape[0])]
        values, ids = logprobs.topk(k, dim=-1)  # (B, k)
        return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]

    def _reserve(self, rows: int, length: int) -> None:
        """Grow the batch cache to hold `length` positions (rounded up to CACHE_STEP), keeping what it holds."""
        have = self._k[0].shape[2] if self._k else 0
        if length <= have:
            return
        c = self.model.config
        new = min(-(-length // CACHE_STEP) * CACHE_STEP, c.block_size)
        shape = (self.max_batch_size, c.n_head, new, c.head_size)  # (S, nh, L, hs)
        dtype = self.model.transformer.wte.weight.dtype  # the model's precision (an int8 head has none)
        k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(c.n_layer)]
        v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(c.n_layer)]
        for layer in range(len(self._k)):
            k[layer][:rows, :, :have] = self._k[layer][:rows]
            v[layer][:rows, :, :have] = self._v[layer][:rows]
        self._k, self._v = k, v

    def _step(self) -> None:
        """One token for every running row: the jobs' last tokens in, logits out, each job samples its rows."""
        for job in [j for j in self._running if j.cancelled]:
            self.stats["cancelled"] += 1
            job.deliver(Event(done=True))
            self._remove(job)
        if not self._running:
            return
        tokens = torch.cat([job.next_token for job in self._running])[:, None]  # (B, 1)
        pos = torch.tensor([len(job.prompt) + job.generated - 1 for job in self._running for _ in range(job.n)],
                           device=self.device)  # (B,): where each row's last token goes
        B, length = tokens.shape[0], int(pos.max()) + 1
        caches = [_SlotCache(k, v, B, length) for k, v in zip(self._k, self._v)]
        mask = (torch.arange(length, device=self.device)[None] <= pos[:, None])[:, None, None]  # (B, 1, 1, L)
        hidden = self.model.hidden_states(tokens, caches, input_pos=pos, positions=pos[:, None], mask=mask)  # (B, 1, C)
        logits = self.model.lm_head(hidden[:, -1])  # (B, V)
        self.stats["steps"] += 1
        start, done = 0, []
        for job in self._running:
            if self._sample(job, logits[start : start + job.n]):
                done.append(job)
            start += job.n
        for job in done:
            self._remove(job)

    def _sample(self, job: Job, logits: torch.Tensor) -> bool:
        """Draw each row's next token as `generate` does, hand out the text; whether the job has ended."""
        s = job.sampling
        logits = logits[:, : self.vocab_size]  # the ids past the tokenizer's are padding: never sampled
        token = sample_next_token(logits, s.temperature, s.top_k, s.top_p, generator=job.generator)[:, 0]  # (n,)
        eot = self.tokenizer.eot_token
        if eot is not None:
            token = token.masked_fill(job.finished, eot)
            job.finished |= token == eot
        job.generated += 1
        job.next_token = token
        infos = None
        if job.logprobs is not None:
            logprobs = logits.float().log_softmax(-1)  # (n, V)
            chosen = logprobs.gather(-1, token[:, None])[:, 0].tolist()
            infos = [TokenLogprobs(t, lp, top) for t, lp, top in zip(token.tolist(), chosen, self._top(logprobs, job.logprobs))]
        deltas = []
        for i, (row, t) in enumerate(zip(job.rows, token.tolist())):
            delta = RowDelta()
            if row.finish_reason is None:
                if t != eot:
                    row.tokens += 1
                    row.text += row.decoder.decode(self.tokenizer.decode_single_token_bytes(t))
                    if infos is not None:
                        delta.tokens.append(infos[i])
                    self._check_stop(job, row)
                if row.finish_reason is None and (t == eot or job.generated == job.max_tokens):
                    row.finish_reason = "stop" if t == eot else "length"
                    row.text += row.decoder.decode(b"", final=True)  # an unfinished character as U+FFFD
                if row.finish_reason is not None:
                    job.finished[i] = True
                    delta.finish_reason = row.finish_reason
                delta.text = self._take_text(job, row)
            deltas.append(delta)
        job.deliver(Event(deltas=deltas))
        if all(row.finish_reason is not None for row in job.rows):
            self.stats["completed"] += 1
            job.deliver(Event(done=True))
            return True
        return False

    @staticmethod
    def _check_stop(job: Job, row: _Row) -> None:
        # Search only where a stop string could end in the newest text: earlier text was searched before.
        found = [at for stop in job.stop if (at := row.text.find(stop, max(row.sent - len(stop), 0))) >= 0]
        if found:
            row.text = row.text[: min(found)]
            row.finish_reason = "stop"

    @staticmethod
    def _take_text(job: Job, row: _Row) -> str:
        """The text not handed out yet, less a tail that could still become the start of a stop string."""
        hold = 0 if row.finish_reason is not None or not job.stop else max(map(len, job.stop)) - 1
        end = max(len(row.text) - hold, row.sent)
        text, row.sent = row.text[row.sent : end], end
        return text

    def _finish(self, job: Job, reason: str) -> None:
        job.rows = [_Row() for _ in range(job.n)]
        for row in job.rows:
            row.finish_reason = reason
        job.deliver(Event(deltas=[RowDelta(finish_reason=reason) for _ in job.rows]))
        self.stats["completed"] += 1
        job.deliver(Event(done=True))

    def _remove(self, job: Job) -> None:
        """Take a job out of the batch, moving the rows after it down so the running rows stay packed."""
        start = 0
        for other in self._running:
            if other is job:
                break
            start += other.n
        end, total = start + job.n, self._rows_running()
        if end < total:
            for k, v in zip(self._k, self._v):
                k[start : total - job.n] = k[end:total].clone()
                v[start : total - job.n] = v[end:total].clone()
        self._running.remove(job)
        if not self._running:
            self._k, self._v = [], []  # an idle server holds no cache
