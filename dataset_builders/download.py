"""Plain HTTP(S) downloads with a progress bar, checksum check and a clear offline error."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["DownloadError", "download", "sha256sum"]


class DownloadError(RuntimeError):
    """A source could not be fetched (offline, HTTP error or checksum mismatch)."""


def sha256sum(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0, hint: str = "") -> Path:
    """Fetch ``url`` to ``dest`` (kept if it already exists with the right checksum)."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256sum(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {url}: {reason}. The machine looks offline or the server refused the request."
            + (f" {hint}" if hint else "")
        ) from None
    if sha256 is not None:
        got = sha256sum(tmp)
        if got != sha256:
            tmp.unlink(missing_ok=True)
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}")
    os.replace(tmp, dest)
    return dest
