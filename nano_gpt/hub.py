"""Publishing an exported folder on the Hugging Face Hub (`nano-gpt export --push-to-hub=user/repo`).

The push runs after the local export is complete, with `huggingface_hub`'s documented calls
(`create_repo(exist_ok=True)`, `create_branch` for a new revision, `upload_folder`), so a failed
push never touches the local folder, and the message says how to retry.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nano_gpt.errors import NanoGPTError
from nano_gpt.pretrained import hub_reachable

logger = logging.getLogger(__name__)

LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN to a token with write access)"


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
