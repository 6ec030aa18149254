"""Small generated corpora for the data tests."""

import json
import random
from pathlib import Path

WORDS = ("the king", "a horse", "my lord", "ships", "naught", "42", "café", "fair", "\n\n", "shall", "rain", "O", "—")


def documents(count: int, seed: int = 0, words: int = 60) -> list[str]:
    """`count` documents of varied length, reproducible from `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words))) for _ in range(count)]


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({column: text, "id": i}) + "\n" for i, text in enumerate(texts)))
    return path
