"""`nano-gpt export --push-to-hub`: the real huggingface_hub client against a fake Hub on 127.0.0.1.

Only the network is replaced: the CLI runs as a user would, with HF_ENDPOINT pointing at a local HTTP
server that answers the Hub API's create-repo, branch, preupload and commit calls and records them.
"""

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import assert_one_line_error, files_under, run_cli


@dataclass
class FakeHub:
    """What the fake Hub was asked, and how it should answer."""

    endpoint: str = ""
    requests: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, JSON body or {})
    authorizations: set[str] = field(default_factory=set)
    committed: dict[str, bytes] = field(default_factory=dict)  # path in repo -> bytes
    refuse_with: int | None = None  # answer every API call with this status

    def paths(self, method: str = "POST") -> list[str]:
        return [path for m, path, _ in self.requests if m == method]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _reply(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            hub.requests.append(("GET", self.path, {}))
            self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hub.authorizations.add(self.headers.get("Authorization", ""))
            ndjson = "ndjson" in (self.headers.get("Content-Type") or "")
            body = {} if ndjson or not raw else json.loads(raw)
            hub.requests.append(("POST", self.path, body))
            if hub.refuse_with is not None:
                return self._reply(hub.refuse_with, {"error": "Invalid credentials in Authorization header"})
            parts = self.path.strip("/").split("/")  # api, models, owner, name, verb, revision
            if self.path == "/api/repos/create":
                return self._reply(200, {"url": f"{hub.endpoint}/{body['organization']}/{body['name']}"})
            if self.path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and parts[4] == "branch":
                return self._reply(200, {})
            if parts[:2] == ["api", "models"] and parts[4] == "preupload":
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in body["files"]]})
            if parts[:2] == ["api", "models"] and parts[4] == "commit":
                for line in raw.decode().splitlines():
                    record = json.loads(line)
                    if record["key"] == "file":
                        hub.committed[record["value"]["path"]] = base64.b64decode(record["value"]["content"])
                oid = "0" * 40
                return self._reply(200, {"commitUrl": f"{hub.endpoint}/{parts[2]}/{parts[3]}/commit/{oid}",
                                         "commitOid": oid, "pullRequestUrl": None})
            return self._reply(404, {"error": "not found"})

    return Handler


@pytest.fixture()
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hub
    server.shutdown()
    server.server_close()


def _env(hub_endpoint: str, tmp_path: Path, token: str | None = "hf_test_token") -> dict[str, str]:
    """The Hub at `hub_endpoint`, a fresh HF_HOME (no stored login), and HF_TOKEN set or empty."""
    return {"HF_ENDPOINT": hub_endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
            "HF_TOKEN": token or "", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _export(source: Path, export: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli("export", f"--pretrained={source}", "--export-dir", str(export), *args, env=env)


def test_push_uploads_the_finished_folder_and_prints_its_url(fake_hub: FakeHub, tiny_hf_gpt2_vocab_dir: Path,
                                                             tmp_path: Path) -> None:
    export = tmp_path / "export"
    result = _export(tiny_hf_gpt2_vocab_dir, export, "--push-to-hub=alice/tiny-gpt2", "--private", "--revision=dev",
                     env=_env(fake_hub.endpoint, tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"pushed to {fake_hub.endpoint}/alice/tiny-gpt2/tree/dev"
    posts = fake_hub.paths()
    create = next(body for m, path, body in fake_hub.requests if path == "/api/repos/create")
    assert create["name"] == "tiny-gpt2" and create["organization"] == "alice"
    assert create.get("visibility") == "private" or create.get("private") is True  # newer and older huggingface_hub
    assert fake_hub.authorizations == {"Bearer hf_test_token"}
    branch = "/api/models/alice/tiny-gpt2/branch/dev"
    commit = "/api/models/alice/tiny-gpt2/commit/dev"
    assert posts.index("/api/repos/create") < posts.index(branch) < posts.index(commit)
    # Every file of the finished local folder, byte for byte, in one commit.
    assert fake_hub.committed == files_under(export)
    card = fake_hub.committed["README.md"].decode()
    assert 'model="alice/tiny-gpt2"' in card and "--pretrained=alice/tiny-gpt2 " in card and "./export" not in card


def test_a_refused_push_is_one_line_and_keeps_the_local_export(fake_hub: FakeHub, tiny_hf_gpt2_vocab_dir: Path,
                                                               tmp_path: Path) -> None:
    fake_hub.refuse_with = 401
    export = tmp_path / "export"
    result = _export(tiny_hf_gpt2_vocab_dir, export, "--push-to-hub=alice/tiny-gpt2", env=_env(fake_hub.endpoint, tmp_path))
    assert_one_line_error(result, "could not push to alice/tiny-gpt2", "hf auth login",
                          f"hf upload alice/tiny-gpt2 {export} .")
    assert fake_hub.paths() == ["/api/repos/create"] and fake_hub.committed == {}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in export.iterdir()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_without_a_token_the_push_says_how_to_log_in(fake_hub: FakeHub, tiny_hf_gpt2_vocab_dir: Path,
                                                      tmp_path: Path) -> None:
    export = tmp_path / "export"
    result = _export(tiny_hf_gpt2_vocab_dir, export, "--push-to-hub=alice/tiny-gpt2",
                     env=_env(fake_hub.endpoint, tmp_path, token=None))
    assert_one_line_error(result, "not logged in", "hf auth login", "HF_TOKEN")
    assert fake_hub.paths() == []
    assert (export / "model.safetensors").is_file() and (export / "README.md").is_file()


def test_an_unreachable_hub_is_one_line_and_keeps_the_local_export(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    endpoint = f"http://127.0.0.1:{closed.server_address[1]}"
    closed.server_close()  # nothing listens there now
    export = tmp_path / "export"
    result = _export(tiny_hf_gpt2_vocab_dir, export, "--push-to-hub=alice/tiny-gpt2", env=_env(endpoint, tmp_path))
    assert_one_line_error(result, "could not reach the Hugging Face Hub", "hf upload alice/tiny-gpt2")
    assert (export / "model.safetensors").is_file()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--push-to-hub=not a repo"], "not a Hub repo id"),
    (["--push-to-hub=tiny-gpt2"], "needs an owner"),
    (["--private"], "go with --push-to-hub"),
])
def test_bad_push_options_are_refused_before_exporting(args: list[str], fragment: str, tiny_hf_gpt2_vocab_dir: Path,
                                                       tmp_path: Path) -> None:
    result = _export(tiny_hf_gpt2_vocab_dir, tmp_path / "export", *args, env=_env("http://127.0.0.1:9", tmp_path))
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "export").exists()
