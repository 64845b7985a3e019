"""A minimal local stand-in for the Hugging Face Hub's model-download endpoints (tests run offline).

Serves one folder as model repo ``repo_id`` at revision ``"a" * 40`` over real HTTP, so that
``huggingface_hub.snapshot_download`` runs its real code path against it (set ``HF_ENDPOINT``)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHA = "a" * 40


def serve_model_repo(folder: Path, repo_id: str) -> tuple[ThreadingHTTPServer, list[str]]:
    """Start the server on a free port (``server.server_port``); returns it and the list of requested paths."""
    requested: list[str] = []
    files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, body: bytes, content_type: str = "application/octet-stream", head: bool = False, **extra) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in extra.items():
                self.send_header(key.replace("_", "-"), value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _resolve(self, head: bool) -> None:
            name = self.path.split(f"/{repo_id}/resolve/", 1)[1].split("/", 1)[1].split("?")[0]
            if name not in files:
                self.send_response(404)
                self.end_headers()
                return
            data = files[name]
            self._send(data, head=head, ETag=f'"{hashlib.sha1(data).hexdigest()}"', X_Repo_Commit=SHA)

        def do_HEAD(self) -> None:  # noqa: N802
            requested.append(f"HEAD {self.path}")
            if f"/{repo_id}/resolve/" in self.path:
                return self._resolve(True)
            self.send_response(404)
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            requested.append(f"GET {self.path}")
            if self.path.startswith(f"/api/models/{repo_id}/tree/"):
                tree = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()} for n, d in files.items()]
                return self._send(json.dumps(tree).encode(), "application/json")
            if self.path.startswith(f"/api/models/{repo_id}"):
                info = {"id": repo_id, "sha": SHA, "siblings": [{"rfilename": n} for n in files]}
                return self._send(json.dumps(info).encode(), "application/json")
            if f"/{repo_id}/resolve/" in self.path:
                return self._resolve(False)
            self.send_response(404)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requested
