"""Shared fixtures: everything runs offline on data the tests make, or skips when the real TinyShakespeare
is neither in the download cache, nor in ../shared/data, nor downloadable."""

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from nano_gpt.data.sources import TINYSHAKESPEARE_SHA256

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Never touch the network from tests: hub look-ups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def save_tiny_hf_gpt2(folder: Path, *, vocab_size: int = 1000, n_layer: int = 3, n_head: int = 6, n_embd: int = 48,
                      n_positions: int = 64, seed: int = 0, as_bin: bool = False) -> Path:
    """A random `transformers.GPT2LMHeadModel` with odd sizes, saved as Hugging Face would.

    `as_bin` writes a pickled `pytorch_model.bin` as older transformers releases did (current ones
    write only safetensors).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    if as_bin:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hf_gpt2(tmp_path_factory.mktemp("tiny-hf-gpt2"))


@pytest.fixture(scope="session")
def tiny_hf_gpt2_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 with the real 50257-token vocabulary, so text samples decode."""
    return save_tiny_hf_gpt2(tmp_path_factory.mktemp("tiny-hf-gpt2-vocab"), vocab_size=50257, n_layer=2, n_head=2,
                             n_embd=32, n_positions=128)


_TINYSHAKESPEARE: list[tuple[Path | None, str]] = []  # (the file or None, what was tried): searched once


def tinyshakespeare_file() -> Path:
    """The real TinyShakespeare, sha256-checked, from the project download cache, then ../shared/data, then
    the download; when none works the calling test is skipped, saying what was tried."""
    from nano_gpt.cache import cached_path, sha256_file
    from nano_gpt.data.sources import TINYSHAKESPEARE_CACHED, tinyshakespeare_path
    from nano_gpt.errors import NanoGPTError

    if not _TINYSHAKESPEARE:
        found, tried = None, []
        for candidate in (cached_path(TINYSHAKESPEARE_CACHED), SHARED_DATA / "tinyshakespeare.txt"):
            if candidate.is_file() and sha256_file(candidate) == TINYSHAKESPEARE_SHA256:
                found = candidate
                break
            tried.append(f"{candidate} ({'wrong sha256' if candidate.is_file() else 'absent'})")
        if found is None:
            try:
                found = tinyshakespeare_path()  # into the real download cache, sha256-checked
            except NanoGPTError as e:
                tried.append(f"the download ({e})")
        _TINYSHAKESPEARE.append((found, "; ".join(tried)))
    found, tried = _TINYSHAKESPEARE[0]
    if found is None:
        pytest.skip(f"the real TinyShakespeare is not available; tried {tried}")
    return found


@pytest.fixture()
def nano_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project download cache of its own, seeded with the real TinyShakespeare (see `tinyshakespeare_file`)."""
    src = tinyshakespeare_file()
    cache = tmp_path / "nano_gpt_cache"
    (cache / "tinyshakespeare").mkdir(parents=True)
    shutil.copy(src, cache / "tinyshakespeare" / "input.txt")
    monkeypatch.setenv("NANO_GPT_CACHE", str(cache))
    return cache


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes, to compare two runs' outputs exactly."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m nano_gpt ARGS` in a real process, as a user would."""
    return subprocess.run([sys.executable, "-m", "nano_gpt", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """`nano-gpt ARGS` through `main`, in this process: what `run_cli` sees, without a new process's seconds of
    imports. An exception escaping `main` reads as the traceback a user would see."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    argv, handlers, level = sys.argv, logging.root.handlers[:], logging.root.level
    sys.argv = ["nano-gpt", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                from nano_gpt.cli import main

                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:  # noqa: BLE001 - a bug: shown as the traceback it would print
                err.write(traceback.format_exc())
                code = 1
    finally:
        sys.argv = argv
        logging.root.handlers[:], logging.root.level = handlers, level
    out.flush()
    err.flush()
    return subprocess.CompletedProcess(args, code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one `error:` line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def tinyshakespeare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset dir with TinyShakespeare prepared once for the session (see `tinyshakespeare_file`)."""
    from nano_gpt.data.prepare import prepare_dataset

    src = tinyshakespeare_file()
    root = tmp_path_factory.mktemp("tinyshakespeare")
    cache = root / "cache" / "tinyshakespeare"
    cache.mkdir(parents=True)
    shutil.copy(src, cache / "input.txt")
    previous = os.environ.get("NANO_GPT_CACHE")
    os.environ["NANO_GPT_CACHE"] = str(root / "cache")
    try:
        prepare_dataset("tinyshakespeare", dataset_dir=root / "dataset_cache", num_workers=1)
    finally:
        if previous is None:
            del os.environ["NANO_GPT_CACHE"]
        else:
            os.environ["NANO_GPT_CACHE"] = previous
    return root / "dataset_cache"


def write_hellaswag_file(path: Path, n: int = 4) -> Path:
    """A small HellaSwag file in the real format (ctx, endings, label)."""
    import json

    rows = [{"ctx": f"A man is cooking dinner number {i}. He", "endings": ["cuts the onions.", "flies to the moon.",
             "reads a book about ships.", "sings loudly."], "label": i % 4} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_train_config(tiny: dict, dataset_dir: Path, checkpoint_dir: Path, **overrides: object):
    """A TrainConfig of the `tiny` settings on a dataset dir and a run folder."""
    from nano_gpt.train import TrainConfig

    return TrainConfig(**{**tiny, "dataset_dir": str(dataset_dir), "checkpoint_dir": str(checkpoint_dir), **overrides})


def finished_tiny_run(tiny: dict, dataset_dir: Path, factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a finished run of the `tiny` settings: its checkpoint and its log."""
    from nano_gpt.train import train

    folder = factory.mktemp("finished")
    train(tiny_train_config(tiny, dataset_dir, folder))
    return folder


def tiny_train_args(tiny: dict, dataset_dir: Path, checkpoint_dir: Path, *extra: str) -> list[str]:
    """The same as `nano-gpt train` arguments; `extra` flags replace the settings they name."""
    base = {f"--{k.replace('_', '-')}": v for k, v in tiny.items() if k != "compile"}
    base |= {"--dataset-dir": dataset_dir, "--checkpoint-dir": checkpoint_dir}
    overridden = {a.split("=")[0] for a in extra}
    return ["train", "--no-compile", *[f"{k}={v}" for k, v in base.items() if k not in overridden], *extra]
