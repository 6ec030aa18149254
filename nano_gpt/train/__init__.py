"""Training: config and recipes, run folder, train state, the step, evaluation, the run log, and the loop.

The loop (and torch with it) is imported on first use of `train` or `TrainResult`, so that `nano-gpt train
--help`, which builds its options from `TrainConfig`, answers without loading torch.
"""

from typing import TYPE_CHECKING, Any

from nano_gpt.train.config import RECIPES, TrainConfig

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "train"]

if TYPE_CHECKING:
    from nano_gpt.train.loop import TrainResult, train


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        from nano_gpt.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
