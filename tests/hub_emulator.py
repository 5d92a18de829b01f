"""A local stand-in for the Hugging Face Hub's HTTP interface, enough for `snapshot_download`,
`from_pretrained` and `datasets.load_dataset` as the installed versions call them.

    with HubEmulator(tmp) as hub:          # serves on 127.0.0.1:<random port>, daemon thread
        hub.add_repo("model", "org/tiny", folder)      # every file under `folder`
        env = {"HF_ENDPOINT": hub.url, ...}             # huggingface_hub reads it at import: use a subprocess

Endpoints (the ones the installed huggingface_hub/datasets were seen to call; `hub.requests` logs them):
  GET  /api/{models,datasets}/{repo}[/revision/{rev}]      repo info: sha, siblings
  GET  /api/{models,datasets}/{repo}/tree/{rev}[/{path}]   file listing (recursive=1 honoured)
  GET  /api/{models,datasets}/{repo}/paths-info/{rev}      POST too: info on given paths
  HEAD/GET /{repo}/resolve/{rev}/{file}, /datasets/{repo}/resolve/{rev}/{file}
       with ETag, X-Repo-Commit, Content-Length (what hf_hub_download reads)
Anything else is a 404 with the hub's `X-Error-Code: EntryNotFound`, and is logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Repo:
    def __init__(self, kind: str, repo_id: str, files: dict[str, bytes]):
        self.kind, self.id, self.files = kind, repo_id, files
        blob = json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()
        self.sha = hashlib.sha1(blob).hexdigest()  # a 40-hex commit id that changes with the content

    def oid(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id, as the hub reports


class HubEmulator:
    def __init__(self):
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[str] = []
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet; `requests` is the log
                pass

            def do_HEAD(self):
                emulator._handle(self, head=True)

            def do_GET(self):
                emulator._handle(self, head=False)

            def do_POST(self):
                emulator._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubEmulator":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, kind: str, repo_id: str, folder: str | Path) -> str:
        """Serve every file under `folder` as repo `repo_id` (kind: model | dataset); return its commit sha."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        repo = _Repo(kind, repo_id, files)
        self.repos[(kind, repo_id)] = repo
        return repo.sha

    # --- request handling ---
    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urllib.parse.urlsplit(h.path)
        path, query = urllib.parse.unquote(url.path), urllib.parse.parse_qs(url.query)
        self.requests.append(f"{h.command} {h.path}")
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "api" and parts[1] in ("models", "datasets"):
                return self._api(h, "model" if parts[1] == "models" else "dataset", parts[2:], query)
            kind = "model"
            if parts[0] == "datasets":
                kind, parts = "dataset", parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(h, kind, "/".join(parts[:2]), "/".join(parts[4:]), head)
        except KeyError:
            pass
        self._send(h, 404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, head)

    def _api(self, h, kind: str, parts: list[str], query: dict) -> None:
        repo = self.repos.get((kind, "/".join(parts[:2])))
        if repo is None:
            return self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        rest = parts[2:]
        if not rest or rest[0] == "revision":
            info = {"id": repo.id, "_id": repo.id, "sha": repo.sha, "private": False, "gated": False,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": [], "cardData": {},
                    "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": n, "size": len(d), "blobId": repo.oid(n)}
                                 for n, d in repo.files.items()]}
            return self._send(h, 200, json.dumps(info).encode())
        if rest[0] == "tree":
            prefix = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._send(h, 200, json.dumps(self._tree(repo, prefix, recursive)).encode())
        if rest[0] == "paths-info":
            length = int(h.headers.get("Content-Length") or 0)
            body = urllib.parse.parse_qs(h.rfile.read(length).decode()) if length else {}
            wanted = body.get("paths", [])
            entries = [e for e in self._tree(repo, "", True) if e["path"] in wanted]
            return self._send(h, 200, json.dumps(entries).encode())
        self._send(h, 404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"})

    @staticmethod
    def _tree(repo: _Repo, prefix: str, recursive: bool) -> list[dict]:
        entries, dirs = [], set()
        for name, data in sorted(repo.files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rel = name[len(prefix) + 1 :] if prefix else name
            if "/" in rel:
                top = (prefix + "/" if prefix else "") + rel.split("/")[0]
                if top not in dirs:
                    dirs.add(top)
                    entries.append({"type": "directory", "oid": hashlib.sha1(top.encode()).hexdigest(), "size": 0,
                                    "path": top})
                if not recursive:
                    continue
            entries.append({"type": "file", "oid": repo.oid(name), "size": len(data), "path": name})
        return entries

    def _resolve(self, h, kind: str, repo_id: str, name: str, head: bool) -> None:
        repo = self.repos.get((kind, repo_id))
        if repo is None or name not in repo.files:
            return self._send(h, 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}, head)
        data = repo.files[name]
        headers = {"ETag": f'"{repo.oid(name)}"', "X-Repo-Commit": repo.sha,
                   "Content-Type": "application/octet-stream"}
        self._send(h, 200, data, headers, head)

    @staticmethod
    def _send(h, code: int, body: bytes, headers: dict | None = None, head: bool = False) -> None:
        h.send_response(code)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
