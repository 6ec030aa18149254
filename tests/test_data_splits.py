"""A dataset's splits are made together: a split prepared with other settings than its sibling (whose tokens it
would then overlap) is refused with one line and nothing on disk changes, a split prepared alone is cut where its
sibling was, and a manifest from another tokenizer is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, files_under, run_cli_here as cli
from data_corpus import documents
from nano_gpt.data.prepare import prepare_dataset
from nano_gpt.data.shards import verify_split
from nano_gpt.errors import NanoGPTError


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(documents(60, words=40)))
    return path


def _tokens(split_dir: Path) -> np.ndarray:
    manifest = json.loads((split_dir / "manifest.json").read_text())
    return np.concatenate([np.fromfile(split_dir / s["file"], dtype="<u2") for s in manifest["shards"]])


@pytest.mark.parametrize(("first", "second"), [
    ({"splits": ["train", "validation"], "validation_tokens": 100}, {"splits": ["validation"], "validation_tokens": 300}),
    ({"splits": ["train"], "validation_tokens": 0}, {"splits": ["validation"], "validation_tokens": None}),
    ({"splits": ["train", "validation"], "validation_tokens": None}, {"splits": ["train"], "validation_tokens": 50}),
], ids=["other --validation-tokens", "--splits=validation after --validation-tokens=0", "a flag after the default"])
@pytest.mark.parametrize("force", [False, True])
def test_a_split_made_with_other_settings_than_its_sibling_is_refused(corpus: Path, tmp_path: Path, first: dict,
                                                                      second: dict, force: bool) -> None:
    data = tmp_path / "data"
    prepare_dataset(str(corpus), first["splits"], dataset_dir=data, validation_tokens=first["validation_tokens"],
                    num_workers=1)
    before = files_under(data)
    args = ["prepare_dataset", f"--dataset={corpus}", f"--dataset-dir={data}", f"--splits={','.join(second['splits'])}",
            "--num-workers=1", *([] if second["validation_tokens"] is None else
                                 [f"--validation-tokens={second['validation_tokens']}"]), *(["--force"] if force else [])]
    result = cli(*args)
    assert_one_line_error(result, "was prepared with", "overlap", "--force")
    assert files_under(data) == before


def test_a_split_prepared_alone_is_cut_where_its_sibling_was(corpus: Path, tmp_path: Path) -> None:
    """Train first with the default cut (a tenth of the corpus), validation later: the two meet, never overlap,
    even when the corpus grew in between."""
    data = tmp_path / "data"
    train = prepare_dataset(str(corpus), ["train"], dataset_dir=data, num_workers=1)["train"]
    together = prepare_dataset(str(corpus), dataset_dir=tmp_path / "together", num_workers=1)
    with corpus.open("a") as f:  # counting again would now cut elsewhere
        f.write("\n\n" + "\n\n".join(documents(30, words=40)))
    validation = prepare_dataset(str(corpus), ["validation"], dataset_dir=data, num_workers=1)["validation"]
    assert validation.manifest["cut"] == train.manifest["cut"] == together["train"].manifest["cut"]
    assert np.array_equal(_tokens(validation.directory), _tokens(together["validation"].directory))


def test_a_manifest_from_another_tokenizer_is_refused(corpus: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    split = prepare_dataset(str(corpus), ["train"], dataset_dir=data, validation_tokens=0, num_workers=1)["train"]
    path = split.directory / "manifest.json"
    record = split.manifest["tokenizer"]
    for change, message in (({"tokenizer": "llama"}, "not a tokenizer record"),
                            ({"tokenizer": {**record, "n_vocab": 32000}}, "another tokenizer"),
                            ({"tokenizer": "gpt2", "vocab_size": 32000}, "another tokenizer"),  # an older manifest
                            ({"eot_token": 2}, "another tokenizer"), ({"dtype": "uint32"}, "another tokenizer")):
        path.write_text(json.dumps({**split.manifest, **change}))
        with pytest.raises(NanoGPTError, match=message):
            verify_split(data, str(corpus), "train")
