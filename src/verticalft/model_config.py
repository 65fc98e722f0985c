"""A model's `config.json` (or tokenizer config) from wherever it is, before any weight is loaded.

Why: `plan` sized only a hard-coded list of checkpoints and `validate` could not tell a misspelt
Hub id from a real one. A model's dimensions are in its `config.json`, a few kB that
huggingface_hub fetches and caches like any other file, so any model can be planned and checked:

- a local folder: `<folder>/<file>`;
- a Hub id in the local HF cache: `huggingface_hub.try_to_load_from_cache` (no network);
- a Hub id, online: `hf_hub_download` (cached for next time). A 404 for the repository or the
  file is a fact about the recipe (`not_found`), said as a problem; offline, gated, or any
  other failure leaves the answer unknown (`reason`), said as a note.

Online means `hub_reachable` (one short TCP probe of `HF_ENDPOINT`, False at once under
`HF_HUB_OFFLINE`), probed once per process: without the probe an offline machine spends minutes
in huggingface_hub's retries.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclass(frozen=True)
class ModelFile:
    """What a lookup found: the parsed JSON (`data`) and where from (`source`: folder, cache,
    hub), or why there is none (`reason`); `not_found` when the Hub answered that the repository
    or the file does not exist, a problem rather than an unknown."""

    ref: str
    filename: str
    data: dict[str, Any] | None = None
    source: str = ""
    reason: str = ""
    not_found: bool = False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine reach the Hugging Face hub? False at once when `HF_HUB_OFFLINE` is set;
    else one TCP connection to the endpoint with a short timeout. Without it, an offline machine
    spends minutes in huggingface_hub's retries before a download gives up."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    default_port = 80 if url.scheme == "http" else 443
    try:
        with socket.create_connection((url.hostname or "", url.port or default_port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.cache
def hub_online() -> bool:
    """`hub_reachable`, probed once per process (a recipe names several models)."""
    return hub_reachable()


def is_hub_id(ref: str) -> bool:
    """`name` or `owner/name` as the Hub spells repository ids, and not a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(ref).exists() or "://" in ref:
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def _parse(ref: str, filename: str, path: Path, source: str) -> ModelFile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return ModelFile(ref, filename, reason=f"{path}: unreadable ({exc})")
    if not isinstance(data, dict):
        return ModelFile(ref, filename, reason=f"{path}: not a JSON object")
    return ModelFile(ref, filename, data, source)


def model_file(ref: str, filename: str = CONFIG_FILE, revision: str | None = None) -> ModelFile:
    """`filename` of model `ref` (a folder or a Hub id) from the folder, the HF cache or the Hub;
    see the module docstring for what each outcome means."""
    folder = Path(ref)
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            return ModelFile(ref, filename, reason=f"{folder} has no {filename}")
        return _parse(ref, filename, path, "folder")
    if not is_hub_id(ref):
        return ModelFile(ref, filename, reason=f"'{ref}' is neither a local folder nor a Hub id")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, filename, revision=revision)
    if isinstance(cached, str):
        return _parse(ref, filename, Path(cached), "cache")
    if not hub_online():
        return ModelFile(ref, filename, reason="not in the local HF cache and the Hub is not reachable")
    return _download(ref, filename, revision)


def _download(ref: str, filename: str, revision: str | None) -> ModelFile:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = hf_hub_download(ref, filename, revision=revision)
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: it exists
        return ModelFile(ref, filename, reason="a gated repository: accept its license and `hf auth login`")
    except RepositoryNotFoundError:
        return ModelFile(
            ref,
            filename,
            reason="the Hub has no such model (or it is private and this machine is not logged in)",
            not_found=True,
        )
    except RevisionNotFoundError:
        return ModelFile(ref, filename, reason=f"the Hub has no revision '{revision}'", not_found=True)
    except RemoteEntryNotFoundError:  # (LocalEntryNotFoundError: no connection, an OSError below)
        return ModelFile(ref, filename, reason=f"the repository has no {filename}", not_found=True)
    except OSError as exc:  # network errors, HTTP errors other than 404: unknown, not wrong
        return ModelFile(
            ref, filename, reason=str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        )
    return _parse(ref, filename, Path(path), "hub")
