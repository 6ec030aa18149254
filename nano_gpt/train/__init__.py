"""Training: config, optimizer and schedule, metrics, and the loop."""

from nano_gpt.train.config import RECIPES, TrainConfig
from nano_gpt.train.trainer import TrainResult, train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "train"]
