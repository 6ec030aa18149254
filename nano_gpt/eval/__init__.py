"""Evaluation: HellaSwag accuracy and validation loss, as library calls that training reuses."""

from nano_gpt.eval.hellaswag import (
    HELLASWAG_URL,
    ExampleScore,
    HellaSwagExample,
    HellaSwagResult,
    evaluate_hellaswag,
    load_hellaswag,
)
from nano_gpt.eval.validation import validation_loss

__all__ = ["HELLASWAG_URL", "ExampleScore", "HellaSwagExample", "HellaSwagResult", "evaluate_hellaswag",
           "load_hellaswag", "validation_loss"]
