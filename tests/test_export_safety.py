"""`nano-gpt export` never destroys what is not an export, says why in one line, and cleans up after kills."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import assert_one_line_error, files_under, run_cli
from nano_gpt import load_pretrained
from nano_gpt.errors import NanoGPTError
from nano_gpt.export import EXPORT_FILES, export_model
from nano_gpt.model import GPT


@pytest.fixture(scope="module")
def model(tiny_hf_gpt2_vocab_dir: Path) -> GPT:
    return load_pretrained(str(tiny_hf_gpt2_vocab_dir))


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a training run, with HOME beside it: what an export must never replace."""
    work = tmp_path / "home" / "project"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "checkpoint_000010.bin").write_bytes(b"weights")
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return work


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize(("export_dir", "fragment"), [
    (".", "the working directory"),
    ("..", "holds the working directory"),
    ("../..", "holds the working directory"),
    ("/", "holds the working directory"),
    ("~", "holds the working directory"),  # HOME is the project's parent
    ("checkpoints/..", "the working directory"),
    ("", "empty"),
    ("checkpoints", "files no export writes"),
    ("notes.txt", "is a file"),
    ("notes.txt/export", "notes.txt is a file, not a folder"),
    ("notes.txt/a/b/export", "notes.txt is a file, not a folder"),
])
def test_force_refuses_every_folder_but_a_previous_export(export_dir: str, fragment: str, work: Path,
                                                          model: GPT) -> None:
    before = files_under(work.parent)
    for force in (False, True):
        with pytest.raises(NanoGPTError, match=fragment) as refused:
            export_model(model, export_dir, force=force)
        assert "\n" not in str(refused.value)
        if fragment == "files no export writes":
            assert "pass --force" not in str(refused.value)  # never invite replacing the user's files
    assert files_under(work.parent) == before


def test_the_home_folder_is_never_replaced(work: Path, model: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    home = work.parent.parent / "elsewhere"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in EXPORT_FILES:  # even a home folder that looks like an export
        (home / name).write_text("x")
    with pytest.raises(NanoGPTError, match="your home folder"):
        export_model(model, "~", force=True)
    assert {p.name for p in home.iterdir()} == EXPORT_FILES


def test_a_folder_with_an_export_and_other_files_is_never_replaced(work: Path, model: GPT) -> None:
    export_model(model, "export")
    (work / "export" / "eval_results.json").write_text("{}")
    before = files_under(work)
    with pytest.raises(NanoGPTError, match=r"holds files no export writes \(eval_results\.json\)"):
        export_model(model, "export", force=True)
    assert files_under(work) == before


def test_a_previous_export_is_replaced_only_with_force(work: Path, model: GPT) -> None:
    export_model(model, "export")
    (work / "export" / "README.md").write_text("an old card")
    with pytest.raises(NanoGPTError, match="holds a previous export; pass --force"):
        export_model(model, "export")
    assert (work / "export" / "README.md").read_text() == "an old card"
    export_model(model, "export", force=True)
    assert (work / "export" / "README.md").read_text().startswith("---\n")
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "export", "notes.txt"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--export-dir=.", "--force"], "the working directory"),
    (["--export-dir=", "--force"], "--export-dir= is empty"),
    (["--export-dir=notes.txt/export"], "not a folder"),
])
def test_the_cli_refuses_in_one_line_and_changes_nothing(args: list[str], fragment: str, work: Path,
                                                         tiny_hf_gpt2_vocab_dir: Path) -> None:
    before = files_under(work)
    result = run_cli("export", f"--pretrained={tiny_hf_gpt2_vocab_dir}", *args, cwd=work)
    assert_one_line_error(result, fragment)
    assert files_under(work) == before


@pytest.fixture()
def open_tmp() -> Iterator[Path]:
    """A world-traversable temp folder, so a process that dropped root can reach it."""
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def _as_nobody(env: dict[str, str]) -> list[str]:
    """The command prefix that runs a command as the unprivileged user nobody, or a skip where root cannot."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, sys.executable, "-c", "import nano_gpt"], env=env,
                                                         cwd="/", capture_output=True).returncode != 0:
        pytest.skip("running as root, which ignores folder permissions, and cannot run nano-gpt as nobody")
    return prefix


def test_a_read_only_parent_folder_is_one_line(open_tmp: Path, tiny_hf_gpt2_vocab_dir: Path) -> None:
    """Real permissions: as root (which ignores them) the export runs as the unprivileged user nobody."""
    source = shutil.copytree(tiny_hf_gpt2_vocab_dir, open_tmp / "tiny")
    source.chmod(0o755)  # copytree kept pytest's private 0700, and safetensors writes 0600 files
    for file in source.iterdir():
        file.chmod(0o644)
    read_only = open_tmp / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    (open_tmp / "home").mkdir(mode=0o777)
    (open_tmp / "home").chmod(0o777)
    env = {**os.environ, "HOME": str(open_tmp / "home"), "HF_HOME": str(open_tmp / "home" / "hf"),
           "MPLCONFIGDIR": str(open_tmp / "home" / "mpl"), "XDG_CACHE_HOME": str(open_tmp / "home" / "cache")}
    command = [sys.executable, "-m", "nano_gpt", "export", f"--pretrained={source}", f"--export-dir={read_only / 'export'}"]
    if os.geteuid() == 0:
        command = [*_as_nobody(env), *command]
    result = subprocess.run(command, cwd=open_tmp / "home", env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "cannot write to", "Permission denied", "--export-dir")
    assert list(read_only.iterdir()) == []


def _temps_of_a_dead_process(target: Path, *kinds: str) -> list[Path]:
    """Temp folders that a process recorded beside `target` (one per kind: "tmp", or "aside" for a folder
    moved aside by `replace_folder`) and left behind when it died."""
    script = ("import os, sys; from pathlib import Path; from nano_gpt.files import temp_path\n"
              "for kind in sys.argv[2:]:\n"
              "    t = temp_path(Path(sys.argv[1]), aside=kind == 'aside'); t.mkdir(); print(t)\n"
              "os._exit(0)")
    made = subprocess.run([sys.executable, "-c", script, str(target), *kinds], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    return [Path(line) for line in made.stdout.splitlines()]


def test_leftovers_of_dead_exports_are_removed_and_nothing_else(work: Path, model: GPT) -> None:
    export_model(model, "export")  # so the dead export's folder moved aside is stale, not the only copy
    dead = _temps_of_a_dead_process(work / "export", "tmp", "aside")
    for folder in dead:
        (folder / "model.safetensors").write_bytes(b"partial")
    # Not ours to delete: a live export's temp (this process's), a name in our scheme that no record holds, and
    # a user's folder that looks like a temp of another scheme.
    from nano_gpt.files import discard_temp, temp_path

    live = temp_path(work / "export")
    kept = [live, work / f".export.nano-gpt-tmp.{_dead_pid()}.0123abcd", work / f".export.{_dead_pid()}.0123abcd.tmp"]
    try:
        for folder in kept:
            folder.mkdir()
        export_model(model, "export", force=True)
        assert not any(folder.exists() for folder in dead) and all(folder.is_dir() for folder in kept)
        assert {p.name for p in (work / "export").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    finally:
        discard_temp(live)


def test_an_export_killed_between_its_renames_gets_the_old_folder_back(work: Path, model: GPT) -> None:
    export_model(model, "export")
    (aside,) = _temps_of_a_dead_process(work / "export", "aside")
    aside.rmdir()
    (work / "export").rename(aside)  # the kill left: no export/, the previous export moved aside
    with pytest.raises(NanoGPTError, match="holds a previous export"):
        export_model(model, "export")  # put back first, then, as ever, replaced only with --force
    assert not aside.exists() and (work / "export" / "model.safetensors").is_file()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []


def test_sigkill_during_export_leaves_a_temp_folder_the_next_export_removes(work: Path, model: GPT,
                                                                            tiny_hf_gpt2_vocab_dir: Path) -> None:
    child = subprocess.Popen([sys.executable, "-m", "nano_gpt", "export", f"--pretrained={tiny_hf_gpt2_vocab_dir}",
                              "--export-dir=export"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (temps := list(work.glob(f".export.nano-gpt-tmp.{child.pid}.*"))):
        assert child.poll() is None and time.monotonic() < deadline, "the export ended before its temp folder appeared"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert temps[0].is_dir() and not (work / "export").exists()  # killed mid-way: only the temp folder
    export_model(model, "export")
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []
    assert {p.name for p in (work / "export").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
