"""`nano-gpt --help`, each command's --help and a parser error answer without importing torch, transformers,
datasets or numpy: the work's imports happen where the work starts. Each case runs in a fresh process,
since this one has long since imported them."""

import json
import subprocess
import sys

import pytest

from conftest import assert_one_line_error
from nano_gpt.cli import app

HEAVY = ("torch", "transformers", "datasets", "numpy")
COMMANDS = [c.name for c in app.registered_commands]

# Runs `nano-gpt ARGS` through main() and prints its exit code, output and the heavy modules it imported.
_PROBE = """
import contextlib, io, json, sys
args, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["nano-gpt", *args]
out, err, code = io.StringIO(), io.StringIO(), 0
from nano_gpt.cli import main
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(),
                  "imported": sorted({m.split(".")[0] for m in sys.modules} & set(heavy))}))
"""


def _probe(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_command_is_probed() -> None:
    assert {"sample", "train", "prepare_dataset", "plot", "export", "eval"} <= set(COMMANDS)


@pytest.mark.parametrize("args", [[], ["--help"], *([c, "--help"] for c in COMMANDS)], ids=lambda a: " ".join(a) or "bare")
def test_help_answers_without_importing_torch(args: list[str]) -> None:
    seen = _probe(*args)
    assert "Usage:" in seen["out"] + seen["err"]
    assert seen["code"] == (2 if not args else 0)  # bare `nano-gpt` prints the help as a usage error
    assert seen["imported"] == [], f"`nano-gpt {' '.join(args)}` imported {seen['imported']}"


@pytest.mark.parametrize("args", [["train", "--bogus"], ["sample", "--top-k=0"], ["no-such-command"]], ids=" ".join)
def test_a_parser_error_is_one_line_without_importing_torch(args: list[str]) -> None:
    seen = _probe(*args)
    assert seen["code"] == 2
    assert_one_line_error(subprocess.CompletedProcess(args, seen["code"], seen["out"], seen["err"]))
    assert seen["imported"] == [], f"`nano-gpt {' '.join(args)}` imported {seen['imported']}"


def test_the_library_still_loads_its_names_on_first_use() -> None:
    # nano_gpt's torch-using names are imported lazily; `from nano_gpt import ...` must still give the objects.
    code = ("import nano_gpt.generate as m, sys; from nano_gpt import GPT, generate, load_pretrained, get_tokenizer; "
            "assert callable(generate) and generate is sys.modules['nano_gpt.generate'].generate; "
            "from nano_gpt.train import train, TrainResult; assert callable(train); print(GPT.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "GPT", result.stderr
