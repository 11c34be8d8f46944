"""Prompts on the Hugging Face Hub: a prompt named by a repo id (``org/name``, optionally
``org/name@revision``) is fetched through ``huggingface_hub`` into its cache and read from there."""

from __future__ import annotations

import os
from pathlib import Path

from .backbone import looks_like_path

# The files a shared prompt may consist of: lit_prompts' own export, a PEFT adapter, its model card.
PROMPT_PATTERNS = ["prompt.json", "prompt.safetensors", "adapter_config.json", "adapter_model.safetensors", "README.md"]


def split_revision(name: str) -> tuple[str, str | None]:
    """``org/name@v1`` -> (``org/name``, ``v1``); a name without ``@`` has no revision."""
    repo, at, revision = name.partition("@")
    return (repo, revision) if at and revision else (name, None)


def is_repo_id(name: str) -> bool:
    """``org/name`` (one slash, not a path that exists here)."""
    repo, _ = split_revision(name)
    return repo.count("/") == 1 and not looks_like_path(repo) and not Path(name).exists()


def prompt_folder(name: str | Path, revision: str | None = None) -> Path:
    """A local folder holding the prompt ``name`` names: the folder (or file) itself when it exists here,
    else the snapshot of Hub repo ``name`` at ``revision`` (the cache's copy when offline)."""
    if isinstance(name, Path) or not is_repo_id(name):
        return Path(name)
    repo, pinned = split_revision(name)
    revision = revision or pinned
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=PROMPT_PATTERNS))
    except RevisionNotFoundError:
        raise FileNotFoundError(f"prompt {where}: the Hub repo has no such revision") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"prompt {where} is neither a local folder nor a Hub repo (or it is private: log in "
                                "with `hf auth login`)") from None
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set: only the local cache is searched)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise FileNotFoundError(f"prompt {where} is neither a local folder nor in the Hugging Face cache, and the "
                                f"Hub cannot be reached{offline}") from None
