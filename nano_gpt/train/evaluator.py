"""What training measures every --eval-steps: validation loss, HellaSwag accuracy, and a sample to read."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from nano_gpt.config import SAMPLE_PROMPT
from nano_gpt.data import ShardLoader
from nano_gpt.errors import NanoGPTError
from nano_gpt.eval.validation import steps_within_split
from nano_gpt.eval import HellaSwagExample, evaluate_hellaswag, load_hellaswag, validation_loss
from nano_gpt.generate import generate
from nano_gpt.model import GPT
from nano_gpt.parallel import whole_model
from nano_gpt.runtime import Runtime
from nano_gpt.tokenizer import CharTokenizer, Tokenizer
from nano_gpt.train.config import TrainConfig
from nano_gpt.runlog import RunLog

logger = logging.getLogger(__name__)



def load_training_hellaswag(config: TrainConfig, tokenizer: Tokenizer) -> list[HellaSwagExample] | None:
    """The HellaSwag examples to evaluate on, or None. Asked for explicitly (a count or a file), an
    unavailable file is an error; by default, one warning and training goes on without it. HellaSwag is
    needs a tokenizer that encodes any text: a character-level run skips it (and refuses it when asked)."""
    if config.hellaswag_samples == 0:
        return None
    explicit = config.hellaswag_samples is not None or config.hellaswag_file is not None
    if isinstance(tokenizer, CharTokenizer):
        if explicit:
            raise NanoGPTError("HellaSwag needs a tokenizer that encodes any text, and this run's dataset is "
                               "character-level; pass --hellaswag-samples=0")
        logger.info("HellaSwag is skipped: this run's dataset is character-level")
        return None
    try:
        return load_hellaswag(config.hellaswag_file, limit=config.hellaswag_samples)
    except NanoGPTError as e:
        if explicit:
            raise
        logger.warning("HellaSwag is skipped: %s (pass --hellaswag-samples=0 to silence this)", e)
        return None


class Evaluator:
    """Runs the evaluations and logs them; built before step 0, so missing data fails at start."""

    def __init__(self, config: TrainConfig, runtime: Runtime, model: GPT, forward: nn.Module, tokenizer: Tokenizer,
                 log: RunLog | None = None) -> None:
        self.config, self.runtime, self.model, self.forward = config, runtime, model, forward
        self.tokenizer = tokenizer
        self.log = log  # the run's log, on the main process only
        self.val_loader: ShardLoader | None = None
        self.validation_steps = 0
        if config.validation_steps > 0:
            self.val_loader = ShardLoader(Path(config.dataset_dir), config.dataset, "validation",
                                          config.micro_batch_size, config.sequence_length,
                                          rank=runtime.rank, world_size=runtime.world_size, tokenizer=config.tokenizer)
            self.validation_steps = steps_within_split(self.val_loader, config.validation_steps)
        self.hellaswag = load_training_hellaswag(config, tokenizer)

    def __call__(self, step: int) -> dict[str, float]:
        """Evaluate before `step`'s update; returns the figures measured."""
        tokens = step * self.config.total_batch_size
        metrics: dict[str, float] = {}
        self.model.eval()
        if self.val_loader is not None:
            # The (maybe compiled) training forward sees the training shapes again: no recompilation.
            val = validation_loss(self.forward, self.val_loader, self.validation_steps, self.runtime.device,
                                  self.runtime.dtype)
            metrics["val_loss"] = val
            self._record("val", step, tokens=tokens, val_loss=val)
            logger.info("step: %d | val loss: %.4f", step, val)
        # Every rank enters: under FSDP gathering the whole model is a collective. From here on ranks run different
        # passes (rank 0 alone writes the samples).
        with whole_model(self.model) as model:
            if self.hellaswag is not None:
                metrics.update(self._hellaswag(model, step, tokens))
            if self.runtime.is_main:
                self._log_samples(model, step, tokens)
        self.model.train()
        return metrics

    def _hellaswag(self, model: GPT, step: int, tokens: int) -> dict[str, float]:
        # Variable-length batches: the uncompiled module, so evaluation never triggers recompilation.
        result = evaluate_hellaswag(model, self.hellaswag, self.runtime.device, dtype=self.runtime.dtype,
                                    rank=self.runtime.rank, world_size=self.runtime.world_size, tokenizer=self.tokenizer)
        self._record("hellaswag", step, tokens=tokens, acc=result.acc, acc_norm=result.acc_norm, total=result.total)
        logger.info("step: %d | hellaswag acc_norm: %.4f (%d/%d)", step, result.acc_norm, result.correct_norm,
                    result.total)
        return {"hellaswag_acc": result.acc, "hellaswag_acc_norm": result.acc_norm}

    def _record(self, kind: str, step: int, **fields: float) -> None:
        if self.log is not None:
            self.log.write(kind, step, **fields)

    def _log_samples(self, model: GPT, step: int, tokens: int) -> None:
        enc = self.tokenizer
        # A character model starts from a newline, as nanoGPT's sample.py, and writes as far as its context allows.
        char = isinstance(enc, CharTokenizer)
        ids = enc.encode_ordinary(("\n" if "\n" in enc.chars else enc.chars[0]) if char else SAMPLE_PROMPT)
        new_tokens = min(model.config.block_size - len(ids), 200 if char else 24)
        if new_tokens < 1:
            return
        prompt = torch.tensor([ids] * 2, device=self.runtime.device)
        with self.runtime.autocast():
            samples = generate(model, prompt, new_tokens, top_k=50, eos_token=enc.eot_token, vocab_size=enc.n_vocab,
                               generator=torch.Generator(self.runtime.device).manual_seed(42))
        texts = [enc.decode(row).strip() if char else enc.decode(row) for row in samples]
        for i, text in enumerate(texts):
            logger.info("sample %d: %s", i, text)
        self._record("sample", step, tokens=tokens, texts=texts)
