"""A loopback Hugging Face Hub for tests: the endpoints of ../shared/HUB_PROTOCOL.md.

It serves the real ``huggingface_hub`` client over real HTTP on 127.0.0.1 (push, model
info, tree, downloads, commits) and is strict: any request it does not understand is
answered 400 and recorded in ``server.unknown``, which tests assert is empty. Tokens are
only ever read from the Authorization header. ``server.fail`` injects failures:
``{"commit": [500, 500]}`` answers the next two commits with 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

TOKEN = "hf_loopbackTestToken0123456789"
USER = "tester"
LFS_EXTENSIONS = (".safetensors", ".png", ".bin", ".pt", ".parquet", ".arrow")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    kind: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored through LFS
    commits: list[dict] = field(default_factory=list)
    gated: bool = False  # files refused (403 GatedRepo) to everyone: terms never accepted

    @property
    def sha(self) -> str:
        return self.commits[-1]["id"] if self.commits else "0" * 40


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.objects: dict[str, bytes] = {}  # LFS store, by sha256
        self.unknown: list[str] = []
        self.requests: list[str] = []
        self.fail: dict[str, list[int]] = {}
        self.sent: dict[tuple[str, str, str], int] = {}  # file bytes sent, by (kind, repo, path)
        self.received: list[bytes] = []  # every request body, refused ones included
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "HubServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def bytes_sent(self, kind: str, repo_id: str) -> dict[str, int]:
        """File bytes sent so far for one repo, by path (range reads count what they sent)."""
        with self.lock:
            return {path: n for (k, r, path), n in self.sent.items() if (k, r) == (kind, repo_id)}

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}


class _Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.received.append(data)
        return data

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if raw is None and payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        self._send(status, {"error": message}, {**({"X-Error-Code": code} if code else {}), **(headers or {})})

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def _unknown(self) -> None:
        self.server.unknown.append(f"{self.command} {self.path}")
        self._error(400, f"loopback hub does not understand {self.command} {self.path}")

    def _injected(self, route: str) -> bool:
        with self.server.lock:
            queue = self.server.fail.get(route)
            status = queue.pop(0) if queue else None
        if status is not None:
            self._error(status, f"injected failure {status}")
            return True
        return False

    def _repo(self, kind: str, repo_id: str) -> Repo | None:
        repo = self.server.repos.get((kind, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return None
        return repo

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlparse(self.path)
        path, method = unquote(url.path), self.command
        self.server.requests.append(f"{method} {url.path}")
        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami()
        if path == "/api/repos/create" and method == "POST":
            return self._create()
        if path == "/api/agent-harnesses" and method == "GET":  # the client's agent registry: none here
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if path == "/api/validate-yaml" and method == "POST":
            self._body()
            return self._send(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
        if m and method == "POST":
            return (self._preupload if m[3] == "preupload" else self._commit)(_KINDS[m[1]], m[2])
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            return self._lfs_batch()
        m = re.fullmatch(r"/lfs/(upload|verify)/([0-9a-f]{64})", path)
        if m and method in ("PUT", "POST"):
            return self._lfs_upload(m[2]) if m[1] == "upload" else self._lfs_verify(m[2])
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m and method == "GET":
            return self._info(_KINDS[m[1]], m[2])
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m and method == "GET":
            return self._tree(_KINDS[m[1]], m[2], m[4] or "")
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/paths-info/([^/]+)", path)
        if m and method == "POST":
            return self._paths_info(_KINDS[m[1]], m[2])
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commits/([^/]+)", path)
        if m and method == "GET":
            return self._commits(_KINDS[m[1]], m[2])
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            return self._resolve("dataset" if m[1] else "model", m[2], m[4])
        self._unknown()

    def _whoami(self) -> None:
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"name": USER, "type": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def _create(self) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        if self._injected("create"):
            return None
        namespace = body.get("organization") or USER
        if namespace != USER:
            return self._error(403, f"You don't have the rights to create a repo under {namespace}")
        kind = body.get("type") or "model"
        repo_id = f"{namespace}/{body['name']}"
        prefix = "" if kind == "model" else f"{kind}s/"
        if (kind, repo_id) in self.server.repos:
            return self._send(409, {"error": "You already created this repo", "url": f"{self.server.url}/{prefix}{repo_id}"})
        private = bool(body.get("private")) or body.get("visibility") == "private"
        self.server.repos[(kind, repo_id)] = Repo(kind, private)
        self._send(200, {"url": f"{self.server.url}/{prefix}{repo_id}"})

    def _preupload(self, kind: str, repo_id: str) -> None:
        body = json.loads(self._body())
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        files = []
        for entry in body["files"]:
            path = entry["path"]
            lfs = path.endswith(LFS_EXTENSIONS) or entry["size"] > 10 * 2**20
            info = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if path in repo.files:
                data = repo.files[path]
                info["oid"] = hashlib.sha256(data).hexdigest() if path in repo.lfs else git_sha1(data)
            files.append(info)
        self._send(200, {"files": files})

    def _lfs_batch(self) -> None:
        body = json.loads(self._body())
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        if body.get("operation") != "upload" or body.get("hash_algo", "sha256") != "sha256":
            return self._unknown()
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.server.objects:
                base = f"{self.server.url}/lfs"
                entry["actions"] = {"upload": {"href": f"{base}/upload/{obj['oid']}"},
                                    "verify": {"href": f"{base}/verify/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_upload(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "content does not match its sha256")
        self.server.objects[oid] = data
        self._send(200)

    def _lfs_verify(self, oid: str) -> None:
        body = json.loads(self._body())
        if body.get("oid") != oid or oid not in self.server.objects:
            return self._error(404, "object not stored")
        self._send(200, {})

    def _commit(self, kind: str, repo_id: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        if self._injected("commit"):
            return None
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        files, lfs, header = dict(repo.files), set(repo.lfs), None
        for line in lines:  # build the new snapshot first: a commit applies whole or not at all
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._unknown()
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.server.objects:
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.server.objects[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                lfs.discard(value["path"])
            else:
                return self._unknown()
        if header is None:
            return self._error(400, "commit without header")
        if files != repo.files or not repo.commits:
            oid = hashlib.sha1(json.dumps([repo.sha, sorted((p, git_sha1(d)) for p, d in files.items())]).encode()).hexdigest()
            repo.files, repo.lfs = files, lfs
            repo.commits.append({"id": oid, "title": header.get("summary", ""), "message": header.get("description", "")})
        self._send(200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{repo.sha}", "commitOid": repo.sha})

    def _info(self, kind: str, repo_id: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        card = repo.files.get("README.md", b"").decode(errors="replace")
        card_data = None
        if card.startswith("---"):
            import yaml

            card_data = yaml.safe_load(card.split("---")[1])
        self._send(200, {
            "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(repo.files)], "cardData": card_data, "tags": [],
        })

    def _tree(self, kind: str, repo_id: str, prefix: str) -> None:
        """The Hub's listing: the folder's immediate files and folders, or everything below
        it with ``recursive=true``; a path that is no folder is 404 EntryNotFound."""
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        base = prefix.strip("/")
        entries, folders = [], set()
        for path, data in sorted(repo.files.items()):
            if base and not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1 :] if base else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # the folders on the way to this file
                if recursive or depth == 1:
                    folders.add("/".join(([base] if base else []) + parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._file_entry(repo, path))
        if base and not entries and not folders:
            return self._error(404, f"Entry {base} not found", "EntryNotFound")
        dirs = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        self._send(200, dirs + entries)

    @staticmethod
    def _file_entry(repo: Repo, path: str) -> dict:
        data = repo.files[path]
        entry = {"type": "file", "oid": git_sha1(data), "size": len(data), "path": path}
        if path in repo.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _paths_info(self, kind: str, repo_id: str) -> None:
        """``POST /api/{t}s/{repo}/paths-info/{rev}``: entries for the paths that exist."""
        fields = parse_qs(self._body().decode())
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        found = []
        for path in fields.get("paths", []):
            path = path.strip("/")
            if path in repo.files:
                found.append(self._file_entry(repo, path))
            elif any(p.startswith(path + "/") for p in repo.files):
                found.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path})
        self._send(200, found)

    def _commits(self, kind: str, repo_id: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        self._send(200, [{"id": c["id"], "title": c["title"], "message": c["message"],
                          "authors": [{"user": USER}], "date": "2026-11-28T00:00:00.000Z"} for c in reversed(repo.commits)])

    def _resolve(self, kind: str, repo_id: str, path: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        commit = {"X-Repo-Commit": repo.sha}
        if repo.gated:
            return self._error(403, f"Access to {repo_id} is restricted: you must accept its conditions", "GatedRepo",
                               commit)
        if path not in repo.files:
            return self._error(404, f"Entry {path} not found", "EntryNotFound", commit)
        data = repo.files[path]
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs else git_sha1(data)
        headers = {**commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            end = int(match[2]) if match[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start : end + 1]
        else:
            status = 200
        if self.command == "GET":
            with self.server.lock:
                key = (kind, repo_id, path)
                self.server.sent[key] = self.server.sent.get(key, 0) + len(data)
        self._send(status, headers=headers, raw=data)
