from pathlib import Path

import pytest

from nano_gpt.cache import cached_download
from nano_gpt.errors import NanoGPTError


def test_offline_download_names_the_url_and_the_path_to_fill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", str(tmp_path))
    url = "http://127.0.0.1:9/nothing.txt"  # the discard port: connection refused at once
    with pytest.raises(NanoGPTError) as e:
        cached_download(url, "thing/nothing.txt")
    assert url in str(e.value) and str(tmp_path / "thing" / "nothing.txt") in str(e.value)
    assert not list(tmp_path.rglob("*.part*"))


def test_a_file_placed_by_hand_is_used_and_its_hash_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("hello")
    good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert cached_download("http://127.0.0.1:9/f.txt", "d/f.txt", sha256=good).read_text() == "hello"
    with pytest.raises(NanoGPTError, match="expected"):
        cached_download("http://127.0.0.1:9/f.txt", "d/f.txt", sha256="0" * 64)
