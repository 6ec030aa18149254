"""Layers point one way: drawing a log, exporting a model or writing its card loads no training code."""

from __future__ import annotations

import subprocess
import sys

import pytest

TRAINING = ("nano_gpt.train.loop", "nano_gpt.train", "torch.distributed.fsdp", "torch.distributed.checkpoint")


@pytest.mark.parametrize("module", ["nano_gpt.plot", "nano_gpt.export", "nano_gpt.model_card", "nano_gpt.runlog"])
def test_importing_a_module_that_does_not_train_loads_no_training_code(module: str) -> None:
    code = f"import sys, {module}; print(' '.join(m for m in {TRAINING!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"importing {module} loaded {result.stdout.strip()}"
