"""Training: config and recipes, run folder, train state, the step, evaluation, the run log, and the loop."""

from nano_gpt.train.config import RECIPES, TrainConfig
from nano_gpt.train.loop import TrainResult, train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "train"]
