"""Publish a built dataset folder (parquet + README.md card) as a Hugging Face Hub dataset repo."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PublishError", "publish_folder"]


class PublishError(RuntimeError):
    """The folder cannot be published (not a built dataset, offline, or the Hub refused)."""


def publish_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload dataset built with CrossMat dataset_builders",
) -> str:
    """Create (if needed) the dataset repo ``repo_id`` and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    card = folder / "README.md"
    if not card.is_file() or "configs:" not in card.read_text():
        raise PublishError(f"{folder} is not a built dataset folder (no README.md dataset card with `configs:`)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise PublishError("HF_HUB_OFFLINE is set: cannot publish; unset it and run again when online")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=["*.tmp*", "*.part*", "**/_signature.json"],
        )
    except Exception as exc:  # network errors come as requests/httpx/OSError subclasses or HfHubHTTPError
        raise PublishError(
            f"could not publish {folder} to https://huggingface.co/datasets/{repo_id}: {type(exc).__name__}: "
            f"{str(exc)[:300]}. Check the network connection (the Hub may be unreachable / offline) and that "
            "you are logged in (`hf auth login` or HF_TOKEN) with write access."
        ) from exc
    return str(getattr(info, "commit_url", info))
