"""lm-evaluation-harness tasks on a nano-gpt model, in-process: our model behind lm-eval's `LM` interface.

Scoring follows `nano_gpt.eval.hellaswag`: the context and the continuation are tokenized apart (an
empty context is end-of-text), the continuation's tokens are scored under the measured precision's
autocast, and many requests share a forward pass, sorted by length. Generation (`generate_until`) runs
through the server's `Batcher`, so requests decode together and stop strings end them.

Imported only for `nano-gpt eval --tasks`: lm-eval is the optional `eval` extra.
"""

import difflib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.runtime import autocast
from nano_gpt.serve.batcher import Batcher, Event, Job, Sampling
from nano_gpt.tokenizer import Tokenizer, check_ids_fit

logger = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


class NanoGPTLM(LM):
    """A `GPT` and its tokenizer as an lm-eval model, on `device` with autocast to `dtype` for scoring."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, device: torch.device, dtype: torch.dtype | None,
                 batch_size: int = 8) -> None:
        super().__init__()
        if tokenizer.eot_token is None:
            raise NanoGPTError(f"the tokenizer in {tokenizer.name} has no end-of-text token, which lm-eval's empty "
                               "contexts and rolling windows need")
        self.model, self.tokenizer = model.eval(), tokenizer
        self._torch_device, self._dtype, self.batch_size = device, dtype, batch_size
        self.block_size = model.config.block_size
        self.eot = tokenizer.eot_token

    def _encode(self, text: str, what: str) -> list[int]:
        ids = self.tokenizer.encode_ordinary(text)
        check_ids_fit(ids, self.model.config.vocab_size, self.tokenizer, what)
        return ids

    # Scoring

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            # A trailing space belongs to the continuation, as GPT-2's tokens carry their leading space.
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            pairs.append((self._encode(context, "a context") or [self.eot], self._encode(continuation, "a continuation")))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Each text's total log-likelihood over windows of the model's context (lm-eval's own windowing)."""
        windows, owners = [], []
        for i, request in enumerate(requests):
            ids = self._encode(request.args[0], "a text")
            for window in get_rolling_token_windows(ids, self.eot, self.block_size, 1):
                windows.append(make_disjoint_window(window))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._score(windows)):
            totals[owner] += logprob
        return totals

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, whether greedy decoding gives it) of each continuation after its context."""
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, scored in zip(batch, self._score_batch([pairs[i] for i in batch])):
                results[i] = scored
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> Iterator[tuple[float, bool]]:
        # The model sees at most block_size tokens: the continuation's last, and as much context as fits.
        rows = [(context + continuation)[-(self.block_size + 1) :][:-1] for context, continuation in pairs]
        T = max(map(len, rows))
        idx = torch.zeros(len(rows), T, dtype=torch.long)  # right padding, which causal attention never sees
        for b, row in enumerate(rows):
            idx[b, : len(row)] = torch.tensor(row)
        with autocast(self._torch_device, self._dtype):
            hidden = self.model.hidden_states(idx.to(self._torch_device))  # (B, T, C)
        for b, ((_, continuation), row) in enumerate(zip(pairs, rows)):
            n = len(continuation)
            with autocast(self._torch_device, self._dtype):
                logits = self.model.lm_head(hidden[b, len(row) - n : len(row)])  # (n, V)
            logprobs = F.log_softmax(logits.float(), dim=-1)
            target = torch.tensor(continuation, device=self._torch_device)
            total = logprobs.gather(-1, target[:, None]).sum().item()
            yield total, bool((logprobs.argmax(-1) == target).all())

    # Generation

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Each context continued until one of its `until` strings or `max_gen_toks` tokens; greedy unless
        `do_sample`. All requests decode together in a `Batcher`."""
        batcher = Batcher(self.model, self.tokenizer, max_batch_size=self.batch_size, max_queue=max(len(requests), 1))
        texts = [""] * len(requests)
        errors: list[str] = []
        remaining = [len(requests)]
        all_done = threading.Event()
        jobs = []
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = min(int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), self.block_size - 1)
            sampling = Sampling(temperature=float(kwargs.get("temperature", 1.0)) if kwargs.get("do_sample") else 0.0)
            ids = (self._encode(context, "a context") or [self.eot])[-(self.block_size - max_tokens) :]

            def deliver(event: Event, i: int = i) -> None:  # on the batcher's thread
                if event.deltas:
                    texts[i] += event.deltas[0].text
                if event.error:
                    errors.append(event.error)
                if event.done:
                    remaining[0] -= 1
                    if not remaining[0]:
                        all_done.set()

            jobs.append(Job(ids, 1, max_tokens, sampling, deliver, stop=tuple(u for u in until if u)))
        if not jobs:
            return []
        batcher.start()
        try:
            batcher.submit(jobs)
            all_done.wait()
        finally:
            batcher.stop()
        if errors:
            raise NanoGPTError(errors[0])
        return texts


def _is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def resolve_tasks(names: list[str], manager: TaskManager) -> list[str]:
    """The task names (or YAML files) lm-eval knows; an unknown one is a one-line error with near names."""
    for name in names:
        if name in manager.all_tasks or (_is_task_file(name) and Path(name).is_file()):
            continue
        if _is_task_file(name):
            raise NanoGPTError(f"--tasks: task file {name} not found")
        near = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `lm-eval ls tasks` lists them"
        raise NanoGPTError(f"--tasks: lm-evaluation-harness has no task {name!r}{hint}")
    return names


def evaluate_tasks(model: GPT, tokenizer: Tokenizer, tasks: list[str], device: torch.device, dtype: torch.dtype | None,
                   batch_size: int = 8, limit: int | None = None, num_fewshot: int | None = None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on `tasks` (names, or paths of task YAML files) with our model in-process.

    Returns lm-eval's results dict (`results`, `versions`, `n-samples`, ...).
    """
    # Indexing lm-eval's thousands of task files takes seconds: skipped when every task is a file of its own.
    manager = TaskManager(include_defaults=not all(_is_task_file(name) for name in tasks))
    resolve_tasks(tasks, manager)
    lm = NanoGPTLM(model, tokenizer, device, dtype, batch_size)
    try:
        results = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                  log_samples=False)
    except ConnectionError as e:  # a task's data could not be downloaded (offline, or the Hub is down)
        raise NanoGPTError(f"--tasks: cannot download a task's data ({e}); go online, or set HF_HOME to a cache "
                           "that holds it") from None
    if results is None:  # only on ranks other than 0 under torch.distributed
        raise NanoGPTError("lm-evaluation-harness returned no results")
    return results
