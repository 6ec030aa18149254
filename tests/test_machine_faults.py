"""The machine's faults: nothing is deleted before every check has passed, nothing that is not ours is deleted,
one live process per run, and a full disk, a file-size limit or an odd precision cache is one line (or, for the
cache, one warning) with every file as it was."""

import errno
import io
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import functools
from pathlib import Path

import pytest
import torch

from conftest import (assert_one_line_error, files_under, finished_tiny_run, run_cli_here, tiny_train_args,
                      tiny_train_config)
from nano_gpt import precision, runlog
from nano_gpt.checkpoint import read_checkpoint, save_checkpoint
from nano_gpt.errors import NanoGPTError
from nano_gpt.train import train
from nano_gpt.train import rundir

TINY = dict(model="gpt2-xxs", dataset="tinyshakespeare", device="cpu", sequence_length=32, micro_batch_size=4,
            total_batch_size=128, max_steps=3, warmup_steps=1, max_lr=3e-3, eval_steps=1000, validation_steps=1,
            hellaswag_samples=0, compile=False, dtype="fp32", checkpoint_steps=1000)
DEAD_PID = 99999999  # above any pid_max: no process has it


_config = functools.partial(tiny_train_config, TINY)
_args = functools.partial(tiny_train_args, TINY)


@pytest.fixture(scope="module")
def finished_run(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a finished 3-step run: checkpoint_000002.bin and its log."""
    return finished_tiny_run(TINY, tinyshakespeare_dir, tmp_path_factory)


@pytest.fixture()
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# --- 1. nothing is deleted before every check has passed ------------------------------------------------

@pytest.mark.parametrize("bad", ["--dataset=tinyshakespear", "--total-batch-size=200", "--device=cuda"])
def test_overwrite_deletes_nothing_when_a_later_check_fails(run_copy: Path, tinyshakespeare_dir: Path,
                                                            bad: str) -> None:
    if bad == "--device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = files_under(run_copy)
    result = run_cli_here(*_args(tinyshakespeare_dir, run_copy, "--overwrite", bad))
    assert_one_line_error(result, bad.split("=")[0].removeprefix("--").split("-")[0])
    assert files_under(run_copy) == before


# --- 2. nothing that is not ours is deleted ------------------------------------------------------------

def test_overwrite_never_replaces_a_log_file_that_no_run_began(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.txt"
    readme.write_text("my notes\n")
    for extra in ((), ("--overwrite",)):
        result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "run", f"--log-file={readme}", *extra))
        assert_one_line_error(result, str(readme), "no nano-gpt run began", "--log-file")
        assert readme.read_text() == "my notes\n"
    assert not list((tmp_path / "run").glob("checkpoint_*"))


@pytest.mark.parametrize("lookalike", ["a folder of the user's files", "a text file"])
def test_overwrite_never_deletes_what_is_a_checkpoint_by_name_alone(tinyshakespeare_dir: Path, tmp_path: Path,
                                                                   lookalike: str) -> None:
    run = tmp_path / "run"
    if lookalike == "a text file":
        run.mkdir()
        (run / "checkpoint_000007.bin").write_text("my notes")
    else:
        (run / "checkpoint_000050" / "photos").mkdir(parents=True)
        (run / "checkpoint_000050" / "thesis.txt").write_text("chapter 1")
        (run / "checkpoint_000050" / "photos" / "a.jpg").write_bytes(b"jpeg")
    before = files_under(run)
    result = run_cli_here(*_args(tinyshakespeare_dir, run, "--overwrite"))
    assert_one_line_error(result, "named like a checkpoint but is not one", "--overwrite deletes only")
    assert {name: data for name, data in files_under(run).items() if not name.endswith("lock")} == before


def test_a_log_file_that_is_a_device_is_refused_and_a_linked_one_is_written_and_locked_where_it_points(
        tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    # Through a link in our own folder, so that code which did not follow it could only replace the link.
    device = tmp_path / "device.jsonl"
    device.symlink_to("/dev/null")
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "run", f"--log-file={device}", "--overwrite"))
    assert_one_line_error(result, "--log-file=/dev/null", "not a regular file")
    assert device.is_symlink() and Path("/dev/null").is_char_device() and not Path("/dev/.null.nano-gpt-lock").exists()
    logs = tmp_path / "logs"
    logs.mkdir()
    link = tmp_path / "latest.jsonl"
    link.symlink_to(logs / "run.jsonl")  # dangling until the run writes it
    config = _config(tinyshakespeare_dir, tmp_path / "run", log_file=str(link)).resolved()
    assert config.log_file == str(logs / "run.jsonl")
    live = rundir.prepare(config)
    try:  # a second run naming the log through the link meets the live run's lock on the file itself
        other = _config(tinyshakespeare_dir, tmp_path / "other", log_file=str(link)).resolved()
        with pytest.raises(NanoGPTError, match="still going"):
            rundir.prepare(other)
    finally:
        live.release()
    train(_config(tinyshakespeare_dir, tmp_path / "run2", log_file=str(link)))
    assert link.is_symlink() and runlog.is_run_log(logs / "run.jsonl")


def test_clean_up_removes_only_temps_that_a_dead_process_recorded(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # A user's hidden files and folders that look like temps by name alone, and one in our own scheme that no
    # record names: none is ours to delete.
    (home / f".notes.tmp{DEAD_PID}").write_text("notes")
    (home / f".photos.tmp{DEAD_PID}").mkdir()
    (home / f".photos.tmp{DEAD_PID}" / "cat.jpg").write_bytes(b"cat")
    (home / f".x.nano-gpt-tmp.{DEAD_PID}.0123abcd").write_text("not recorded")
    users = files_under(home)
    # What a killed run recorded and left behind.
    killed = subprocess.run([sys.executable, "-c", "import os, sys; from pathlib import Path; "
                             "from nano_gpt.files import temp_path; t = temp_path(Path(sys.argv[1])); "
                             "t.write_text('half a log'); print(t); os._exit(0)", str(home / "log.jsonl")],
                            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    stale = Path(killed.stdout.strip())
    assert stale.exists()
    run = rundir.prepare(_config(tinyshakespeare_dir, tmp_path / "run", log_file=str(home / "log.jsonl")).resolved())
    run.release()
    assert not stale.exists() and not list(home.glob(".nano-gpt-temps.*"))
    after = files_under(home)
    assert {name: after[name] for name in users} == users


# --- 3. one live process per run -------------------------------------------------------------------------

def test_a_second_process_on_a_live_run_is_refused_naming_its_pid(run_copy: Path, tinyshakespeare_dir: Path,
                                                                   tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-m", "nano_gpt", *_args(tinyshakespeare_dir, run_copy, "--resume=auto",
                                                                      "--max-steps=100000", "--checkpoint-steps=1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 120
        while not (run_copy / "checkpoint_000004.bin").exists():
            assert live.poll() is None and time.monotonic() < deadline, "the live run did not get going"
            time.sleep(0.05)
        live.send_signal(signal.SIGSTOP)  # it keeps its lock, and the folder holds still while we look
        before = files_under(run_copy)
        for extra in (("--resume=auto",), ("--overwrite",)):
            result = run_cli_here(*_args(tinyshakespeare_dir, run_copy, *extra))
            assert_one_line_error(result, str(run_copy), "still going", f"PID {live.pid}")
        # Another folder, the same log: the log is locked too.
        result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "other", f"--log-file={run_copy / 'train_log.jsonl'}"))
        assert_one_line_error(result, "--log-file", "still going", f"PID {live.pid}")
        assert files_under(run_copy) == before
    finally:
        live.kill()  # SIGKILL: the OS releases its locks
        live.wait()
    run = rundir.prepare(_config(tinyshakespeare_dir, run_copy, resume="auto").resolved())
    try:
        assert run.resume_file is not None  # the killed run never blocks the next
    finally:
        run.release()


# --- 4. a full disk, a file-size limit, an odd precision cache -------------------------------------------

def _full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_the_previous_one(
        finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = torch.load(finished_run / "checkpoint_000002.bin", weights_only=True)
    target = tmp_path / "checkpoint_000002.bin"
    shutil.copy(finished_run / "checkpoint_000002.bin", target)
    before = files_under(tmp_path)
    monkeypatch.setattr(os, "fsync", _full_disk)  # the data reaches the disk at fsync: where ENOSPC shows
    with pytest.raises(NanoGPTError) as error:
        save_checkpoint(target, state)
    message = str(error.value)
    assert str(target) in message and "No space left" in message and "needs about" in message and "free" in message
    assert files_under(tmp_path) == before and sorted(os.listdir(tmp_path)) == [target.name]


def test_a_checkpoint_beyond_the_file_size_limit_is_one_error_and_the_previous_one_stays(run_copy: Path) -> None:
    checkpoint = run_copy / "checkpoint_000002.bin"
    previous = checkpoint.read_bytes()
    limit = len(previous) // 2  # a real EFBIG from the kernel, which torch.save turns into its own RuntimeError

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    save_again = ("import sys, torch; from nano_gpt.checkpoint import save_checkpoint; "
                  "from nano_gpt.errors import NanoGPTError\n"
                  "try: save_checkpoint(sys.argv[1], torch.load(sys.argv[1], weights_only=True))\n"
                  "except NanoGPTError as e: sys.exit(f'error: {e}')")
    result = subprocess.run([sys.executable, "-c", save_again, str(checkpoint)], capture_output=True, text=True,
                            preexec_fn=limited, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert_one_line_error(result, str(checkpoint), "file-size limit", "needs about", "ulimit -f")
    assert checkpoint.read_bytes() == previous
    assert sorted(p.name for p in run_copy.iterdir() if not p.name.endswith("lock")) == [
        "checkpoint_000002.bin", "train_log.jsonl"]  # no temp, no record of one


@pytest.mark.parametrize("export_format", ["hf", "gguf"])
def test_an_export_beyond_the_file_size_limit_is_one_line(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path,
                                                          export_format: str) -> None:
    """safetensors (Rust) reports EFBIG in its own error's message, gguf's numpy writes as a short write without an
    errno: each is one line naming the limit, and a previous export stays."""
    target = tmp_path / ("export" if export_format == "hf" else "model.gguf")
    where = f"--export-dir={target}" if export_format == "hf" else f"--output={target}"
    command = [sys.executable, "-m", "nano_gpt", "export", f"--pretrained={tiny_hf_gpt2_vocab_dir}",
               f"--format={export_format}", where]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    assert run_cli_here(*command[3:]).returncode == 0  # the previous export, written in this process
    before = files_under(tmp_path)

    def limited() -> None:
        # Past the GGUF header and first tensors (7.9 MB in all), short of the 13 MB of safetensors weights.
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    result = subprocess.run([*command, "--force"], capture_output=True, text=True, preexec_fn=limited, timeout=300,
                            env=env)
    assert_one_line_error(result, str(target), "file-size limit", "ulimit -f")
    assert files_under(tmp_path) == before


def test_a_log_that_cannot_be_appended_stops_the_run_with_a_checkpoint(tinyshakespeare_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    log_file = run / "train_log.jsonl"
    real_open = open

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            if '"kind": "train", "step": 2' in text:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(log_file))
            with real_open(log_file, "a") as f:
                return f.write(text)

    monkeypatch.setattr(runlog, "open", lambda path, mode="r", *a, **k: FullDisk() if mode == "a" and Path(path) == log_file
                        else real_open(path, mode, *a, **k), raising=False)
    result = run_cli_here(*_args(tinyshakespeare_dir, run, "--max-steps=6"))
    assert_one_line_error(result, str(log_file), "No space left", "stopped after step 2",
                          str(run / "checkpoint_000002.bin"), "--resume=auto")
    assert read_checkpoint(run / "checkpoint_000002.bin", train_state=True, hub=False).step == 2
    assert not list(run.glob("checkpoint_00000[3-9]*"))


def test_an_export_on_a_full_disk_is_one_line_and_the_previous_export_stays(
        tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nano_gpt import export

    model = read_checkpoint(tiny_hf_gpt2_vocab_dir).model
    target = tmp_path / "export"
    export.export_model(model, target)
    before = files_under(tmp_path)
    monkeypatch.setattr(export, "save_file", _full_disk)
    with pytest.raises(NanoGPTError) as error:
        export.export_model(model, target, force=True)
    assert str(target) in str(error.value) and "No space left" in str(error.value) and "needs about" in str(error.value)
    assert files_under(tmp_path) == before


@pytest.fixture()
def quiet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(precision, "_warned", False, raising=False)
    monkeypatch.setattr(precision, "machine_load", lambda: (0.0, 8), raising=False)
    return tmp_path


def test_a_sharded_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nano_gpt.checkpoint.sharded import save_sharded

    target = tmp_path / "checkpoint_000002"
    save_sharded(target, {"model": {"w": torch.ones(1000)}, "model_config": {}, "step": 2})
    before = files_under(tmp_path)
    monkeypatch.setattr(os, "fsync", _full_disk)  # met inside torch's own writer, which wraps it in its own error
    with pytest.raises(NanoGPTError) as error:
        save_sharded(target, {"model": {"w": torch.zeros(1000)}, "model_config": {}, "step": 2})
    message = str(error.value)
    assert str(target) in message and "No space left" in message and "needs about 3.9 KiB" in message
    assert files_under(tmp_path) == before and os.listdir(tmp_path) == [target.name]


def test_a_folder_replaced_by_a_process_killed_between_its_renames_is_put_back(tmp_path: Path) -> None:
    """`replace_folder` moves the old folder aside before renaming the new one in: a kill between the two leaves
    no folder under the name, and the next clean-up puts the old one back."""
    target = tmp_path / "checkpoint_000002"
    target.mkdir()
    (target / "weights").write_text("old")
    killed = ("import os, sys; from pathlib import Path; from nano_gpt import files\n"
              "target = Path(sys.argv[1]); new = files.temp_path(target); new.mkdir()\n"
              "(new / 'weights').write_text('new'); rename = os.rename\n"
              "def killed_after_the_first(src, dst): rename(src, dst); os._exit(9)\n"
              "os.rename = killed_after_the_first\n"
              "files.replace_folder(new, target)")
    result = subprocess.run([sys.executable, "-c", killed, str(target)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 9 and not target.exists()
    from nano_gpt.files import remove_stale_temps

    removed = remove_stale_temps(tmp_path)
    assert (target / "weights").read_text() == "old" and len(removed) == 1 and "nano-gpt-tmp" in removed[0].name
    assert os.listdir(tmp_path) == [target.name]


def test_an_export_that_another_export_overtook_leaves_it_in_place(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two exports to one new folder: the one that finishes second, without --force, does not replace the first."""
    from nano_gpt import export

    model = read_checkpoint(tiny_hf_gpt2_vocab_dir).model
    target = tmp_path / "export"
    write_card = export._write_card

    def the_other_export_finishes_first(folder: Path, *args: object) -> None:
        write_card(folder, *args)
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"the other export's")

    monkeypatch.setattr(export, "_write_card", the_other_export_finishes_first)
    with pytest.raises(NanoGPTError, match="written by another export meanwhile; pass --force"):
        export.export_model(model, target)
    assert os.listdir(tmp_path) == ["export"] and (target / "model.safetensors").read_bytes() == b"the other export's"


def test_no_writable_temporary_folder_is_one_line(tmp_path: Path) -> None:
    """torch needs a temporary folder as it loads: a full disk or `ulimit -f 0` leaves none."""
    def no_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    result = subprocess.run([sys.executable, "-m", "nano_gpt", "sample", f"--pretrained={tmp_path}", "hello"],
                            capture_output=True, text=True, preexec_fn=no_files, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONDONTWRITEBYTECODE": "1"})
    assert_one_line_error(result, "temporary file", "TMPDIR")


@pytest.mark.parametrize("fault", ["cache is a file", "verdicts are a folder", "not JSON", "a JSON list"])
def test_an_odd_precision_cache_never_stops_a_command(quiet_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture, fault: str) -> None:
    cache = quiet_cache / "cache"
    if fault == "cache is a file":
        cache.write_text("a file")
    elif fault == "verdicts are a folder":
        (cache / precision.CACHE_FILE).mkdir(parents=True)
    else:
        cache.mkdir()
        (cache / precision.CACHE_FILE).write_text("{" if fault == "not JSON" else "[1, 2]")
    monkeypatch.setenv("NANO_GPT_CACHE", str(cache))
    with caplog.at_level(logging.WARNING, logger="nano_gpt.precision"):
        for _ in range(2):
            dtype, reason = precision.cpu_precision(32, 64, "train")
            assert dtype in (torch.float32, torch.bfloat16) and "GFLOP/s" in reason
    warnings = [r for r in caplog.records if "measuring the CPU precision instead" in r.getMessage()]
    assert len(warnings) == 1
    assert not [p for p in quiet_cache.rglob("*") if "nano-gpt-tmp" in p.name or "nano-gpt-temps" in p.name]


def test_an_empty_nano_gpt_cache_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", "")
    with pytest.raises(NanoGPTError, match="NANO_GPT_CACHE is set but empty"):
        precision.cpu_precision(32, 64, "train")


def test_a_verdict_measured_under_load_is_marked_and_measured_again_when_quiet(
        quiet_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", str(quiet_cache))
    calls = []
    monkeypatch.setattr(precision, "_measure", lambda *a: calls.append(a) or {"fp32_s": 0.02, "bf16_s": 0.01,
                                                                               "fp32_size": 4e9, "bf16_size": 4e9})
    monkeypatch.setattr(precision, "machine_load", lambda: (7.5, 4))
    _, reason = precision.cpu_precision(32, 64, "train")
    assert "measured under load 7.5 on 4 CPUs" in reason
    (entry,) = json.loads((quiet_cache / precision.CACHE_FILE).read_text()).values()
    assert entry["load_1m"] == 7.5 and entry["cpus"] == 4
    precision.cpu_precision(32, 64, "train")  # still loaded: a new measurement would be no better
    assert len(calls) == 1
    monkeypatch.setattr(precision, "machine_load", lambda: (0.5, 4))
    _, reason = precision.cpu_precision(32, 64, "train")
    assert len(calls) == 2 and "under load" not in reason


def test_temp_names_are_ours_and_recorded_before_they_exist(tmp_path: Path) -> None:
    from nano_gpt.files import discard_temp, temp_path

    tmp = temp_path(tmp_path / "model.bin")
    assert tmp.name.startswith(".model.bin.nano-gpt-tmp.") and not tmp.exists()
    assert (tmp_path / f".nano-gpt-temps.{os.getpid()}").read_text() == tmp.name + "\n"
    discard_temp(tmp)
    assert not list(tmp_path.iterdir())


# --- 7. paths ------------------------------------------------------------------------------------------------

def test_paths_that_are_not_what_they_should_be_are_named_as_they_are(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "notes.txt" / "run"))
    assert_one_line_error(result, f"{tmp_path / 'notes.txt'} is a file, not a folder")
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "run", "--resume=/dev/null"))
    assert_one_line_error(result, "/dev/null is not a regular file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- broken caches and odd inputs: one line that names the fix -----------------------------------------------

def test_a_broken_download_cache_names_the_file_to_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nano_gpt.data import prepare_dataset
    from nano_gpt.eval.hellaswag import load_hellaswag

    monkeypatch.setenv("NANO_GPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "tinyshakespeare" / "input.txt").mkdir(parents=True)  # a folder where the corpus goes
    with pytest.raises(NanoGPTError, match="input.txt is in the download cache but is not a file; delete it"):
        prepare_dataset("tinyshakespeare", dataset_dir=tmp_path / "ds", num_workers=1)
    hellaswag = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    hellaswag.parent.mkdir()
    hellaswag.write_text('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}\n{"ctx": "cut sh')
    with pytest.raises(NanoGPTError, match="line 2.*cached download: delete .*hellaswag_val.jsonl"):
        load_hellaswag()


def test_a_device_where_a_file_goes_and_a_missing_tokenizer_folder_are_named_as_they_are(tmp_path: Path) -> None:
    from nano_gpt.eval.hellaswag import load_hellaswag
    from nano_gpt.tokenizer import resolve_tokenizer

    device = tmp_path / "hellaswag.jsonl"
    device.symlink_to("/dev/null")
    with pytest.raises(NanoGPTError, match="is not a regular file"):
        load_hellaswag(device)
    with pytest.raises(NanoGPTError, match="no such folder"):
        resolve_tokenizer(str(tmp_path / "no-such-tokenizer"))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    with pytest.raises(NanoGPTError, match="not a tokenizer that transformers reads"):
        resolve_tokenizer(str(tmp_path / "tok")).encode_ordinary("hello")
