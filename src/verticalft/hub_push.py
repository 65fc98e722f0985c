"""`verticalft push`: an exported model folder (`export/<model>/`, card included) to the Hub.

huggingface_hub does the work (create_repo + upload_folder, one commit); the token comes from
the environment only (HF_TOKEN, as huggingface_hub reads it) and is never printed or written.
Without network the upload fails before anything is sent and the folder is left as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from verticalft.data import offline


class PushError(RuntimeError):
    """Why nothing was uploaded, and what to do."""


@dataclass(frozen=True)
class PushFile:
    path: str  # relative to the folder: the path in the repo
    bytes: int


def files_to_send(folder: Path) -> list[PushFile]:
    """What upload_folder would send: every file under `folder` (hidden ones excepted)."""
    if not (folder / "README.md").is_file():
        raise PushError(f"{folder} has no README.md model card: run `verticalft export` first")
    return [
        PushFile(str(p.relative_to(folder)), p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def token_from_env() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def push(folder: Path, repo: str, private: bool) -> str:
    """Upload `folder` as model repo `repo` (created if absent); returns the commit URL."""
    token = token_from_env()
    if not token:
        raise PushError("no Hub token: set HF_TOKEN in the environment (a write token for the repo's owner)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="model",
            commit_message=f"verticalft export of {folder.name}",
            ignore_patterns=[".*"],
        )
    except OfflineModeIsEnabled as exc:
        raise PushError(
            f"HF_HUB_OFFLINE is set ({exc}); nothing was uploaded, {folder} is unchanged"
        ) from None
    except HfHubHTTPError as exc:
        raise PushError(f"the Hub refused the upload: {exc}; {folder} is unchanged") from None
    except Exception as exc:
        if offline(exc):  # no route, DNS, refused connection: the HTTP client's transport errors
            raise PushError(
                f"could not reach the Hub ({type(exc).__name__}: {exc}); nothing was uploaded, {folder} is unchanged"
            ) from None
        raise
    return str(getattr(info, "commit_url", info))
