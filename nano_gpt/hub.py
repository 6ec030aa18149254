"""The Hugging Face Hub: fetching a model repo (`--pretrained=gpt2`), and publishing an exported folder
(`nano-gpt export --push-to-hub=user/repo`).

A model repo is downloaded into huggingface_hub's own cache (a cached one is used offline), as a folder that
`nano_gpt.checkpoint` reads as any Hugging Face folder. The push runs after the local export is complete, with `huggingface_hub`'s documented calls
(`create_repo(exist_ok=True)`, `create_branch` for a new revision, `upload_folder`), so a failed
push never touches the local folder, and the message says how to retry.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

from nano_gpt.errors import NanoGPTError

logger = logging.getLogger(__name__)

LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN to a token with write access)"
# OpenAI's checkpoints now live under the openai-community organisation.
HUB_ALIASES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a Hugging Face folder's weights, preferred first


def hub_reachable() -> bool:
    """Whether the Hub's host resolves: huggingface_hub retries connection errors with backoff
    (about 20 s), so an offline machine is told at once instead."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


def _fetch(repo_id: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from nano_gpt.tokenizer import TOKENIZER_FILES

    config = hf_hub_download(repo_id, "config.json", local_files_only=local_only)
    for name in WEIGHT_FILES:
        try:
            hf_hub_download(repo_id, name, local_files_only=local_only)
            break
        except EntryNotFoundError:
            continue
    else:
        raise NanoGPTError(f"{repo_id!r} on the Hugging Face Hub has no model.safetensors or pytorch_model.bin")
    for name in TOKENIZER_FILES:  # optional: many GPT-2s on the Hub have a vocabulary of their own
        try:
            hf_hub_download(repo_id, name, local_files_only=local_only)
        except EntryNotFoundError:  # LocalEntryNotFoundError included: then the repo has no such file cached
            continue
    return Path(config).parent


def download_model(name: str) -> Path:
    """The local folder of a Hub model repo (`gpt2` and the other OpenAI names are aliases), downloaded unless
    huggingface_hub has it cached; failure is one line saying what to pass instead."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = HUB_ALIASES.get(name, name)
    try:
        return _fetch(repo_id, local_only=True)  # already in the huggingface_hub cache
    except (LocalEntryNotFoundError, NanoGPTError):
        pass
    logger.info("fetching %s from the Hugging Face Hub", repo_id)
    try:
        if not hub_reachable():
            raise ConnectionError("no network")
        return _fetch(repo_id, local_only=False)
    except NanoGPTError:
        raise
    except Exception as e:  # offline, unknown repo, gated repo, HTTP errors: all mean "cannot fetch"
        raise NanoGPTError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}); check the name and "
            "your connection, or pass a local folder holding config.json and model.safetensors: --pretrained=./my-gpt2"
        ) from e


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed repo id before the (possibly long) export starts."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise NanoGPTError(f"--push-to-hub={repo_id} is not a Hub repo id; pass USER/NAME ({e})") from e
    if "/" not in repo_id:
        raise NanoGPTError(f"--push-to-hub={repo_id} needs an owner: pass USER/NAME (or ORG/NAME)")


def _retry_hint(folder: Path, repo_id: str, revision: str | None) -> str:
    branch = f" --revision={revision}" if revision else ""
    return f"the export in {folder} is complete; push it later with `hf upload {repo_id} {folder} .{branch}`"


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None) -> str:
    """Upload an exported folder to the model repo `repo_id` (created if missing); returns its URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    check_repo_id(repo_id)
    token = get_token()
    if token is None:
        raise NanoGPTError(f"not logged in to the Hugging Face Hub: {LOGIN_HINT}; {_retry_hint(folder, repo_id, revision)}")
    api = HfApi(token=token)
    try:
        if not hub_reachable():  # huggingface_hub would retry for a while before saying so
            raise ConnectionError("the Hub's host does not resolve")
        repo_url = api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, repo_type="model",
                          commit_message=f"Upload {folder.name}, exported by nano-gpt")
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        reason = {401: f"the token was refused: {LOGIN_HINT}",
                  403: f"the token may not write to {repo_id}: {LOGIN_HINT} with a write token, or choose your own namespace"
                  }.get(status, f"the Hub answered {status}: {str(e).splitlines()[0]}")
        raise NanoGPTError(f"could not push to {repo_id} ({reason}); {_retry_hint(folder, repo_id, revision)}") from e
    except Exception as e:  # noqa: BLE001 - offline, DNS, TLS, proxies: every transport error means the same here
        logger.debug("push to %s failed", repo_id, exc_info=True)
        raise NanoGPTError(f"could not reach the Hugging Face Hub to push to {repo_id} ({e.__class__.__name__}); "
                           f"check your connection, then {LOGIN_HINT} if needed; {_retry_hint(folder, repo_id, revision)}"
                           ) from e
    url = str(repo_url)
    return f"{url}/tree/{revision}" if revision else url
