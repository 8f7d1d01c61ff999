"""A stand-in for the Hugging Face hub on 127.0.0.1: repositories served from local folders.

It answers the calls huggingface_hub's `snapshot_download` and `hf_hub_download` make
(huggingface_hub 2.x; 0.x/1.x read the same model-info `siblings`):

- GET  /api/models/{repo}[/revision/{rev}]  model info: `sha`, `siblings`
- GET  /api/models/{repo}/tree/{rev}        the file listing (`path`, `size`, `oid`)
- HEAD /{repo}/resolve/{rev}/{file}         metadata: X-Repo-Commit, ETag, Content-Length
- GET  /{repo}/resolve/{rev}/{file}         the bytes

Errors carry the X-Error-Code header huggingface_hub turns into its exceptions:
RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    revisions: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, Path] = field(default_factory=dict)  # commit sha -> folder served
    gated_status: Optional[int] = None  # 401 or 403 on every file of a gated repository


class HubStandIn:
    """Serve folders as hub repositories: `add_repo`, then point HF_ENDPOINT at `url`; `stop()` ends it."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, folder: Path, revision: str = "main", gated_status: Optional[int] = None) -> str:
        """Serve `folder` as `repo_id` at `revision`; returns its commit sha."""
        sha = hashlib.sha1(f"{repo_id}@{revision}@{folder}".encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        repo.revisions[revision] = sha
        repo.commits[sha] = Path(folder)
        repo.gated_status = gated_status
        return sha

    def downloaded(self) -> list[str]:
        """The file paths fetched with GET /resolve, in order."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _handler_for(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(parts[2] + "/" + parts[3], parts[4:])
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), body)
            else:
                self._error(404, "")

        def _commit(self, repo_id: str, revision: str) -> tuple[Optional[Repo], Optional[str]]:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None, None
            sha = revision if revision in repo.commits else repo.revisions.get(revision)
            if sha is None:
                self._error(404, "RevisionNotFound")
            return repo, sha

        def _api(self, repo_id: str, rest: list[str]) -> None:
            revision = rest[1] if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main"
            repo, sha = self._commit(repo_id, revision)
            if sha is None:
                return
            files = _files(repo.commits[sha])
            if rest[:1] == ["tree"]:
                listing = [{"type": "file", "path": name, "size": p.stat().st_size, "oid": _oid(p)}
                           for name, p in files.items()]
                self._json(listing)
            else:
                self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                            "gated": "manual" if repo.gated_status else False, "disabled": False,
                            "siblings": [{"rfilename": name} for name in files]})

        def _resolve(self, repo_id: str, revision: str, filename: str, body: bool) -> None:
            repo, sha = self._commit(repo_id, revision)
            if sha is None:
                return
            if repo.gated_status is not None:
                self._error(repo.gated_status, "GatedRepo", "Access to model is restricted.")
                return
            file = _files(repo.commits[sha]).get(filename)
            if file is None:
                self._error(404, "EntryNotFound", commit=sha)
                return
            data = file.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", sha)
            self.send_header("ETag", f'"{_oid(file)}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _json(self, value: object) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str = "", commit: Optional[str] = None) -> None:
            data = json.dumps({"error": message or code}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            if message:
                self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def _oid(file: Path) -> str:
    """The git blob id of a file, which the hub reports as a small file's ETag."""
    data = file.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
