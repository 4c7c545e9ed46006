"""A loopback-only stand-in for the model hub, so download tests run offline.

It serves repos from a local folder (`root/<owner>/<name>/...`) with the routes and headers that
huggingface_hub's `model_info`, `list_repo_files`, `hf_hub_download` and `snapshot_download` use:

- `GET /api/models/<repo>[/revision/<rev>]`: the repo's info (sha, siblings with sizes, card data);
- `GET /api/models/<repo>/tree/<rev>[/<path>]`: the file listing, in one page (no `Link` header);
- `HEAD|GET /<repo>/resolve/<rev>/<file>`: the file, with `X-Repo-Commit`, `ETag`, `Content-Length`
  and, for weights (stored in LFS on the real hub), `X-Linked-Etag` / `X-Linked-Size`; a `Range:
  bytes=N-` request gets a 206 with the rest of the file. No xet headers are sent, so the client
  falls back to plain HTTP.

Errors carry `X-Error-Code` (`RepoNotFound`, `EntryNotFound`) as the hub's do, which the client
turns into its typed errors. `drop_once` cuts the connection part-way through a file's first GET,
as a flaky network does. Every request is recorded, so tests can check what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    repo: str
    file: str  # the file for resolve requests, '' for API calls
    range: str  # the Range header, '' when none


def _blob_etag(data: bytes) -> str:
    # The hub's ETag for a regular file is its git blob id.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """`with HubServer(root) as hub:` serves `root` at `hub.endpoint` (127.0.0.1, a free port).

    The server thread stops on leaving the block, or after `lifetime` seconds at the latest, so a
    test that hangs cannot leave it running.
    """

    def __init__(self, root: str | Path, lifetime: float = 120.0):
        self.root = Path(root)
        self.requests: list[Request] = []
        # file path -> bytes to send before cutting the connection, once.
        self.drop_once: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()

    def gets(self, file: str = "") -> list[Request]:
        """The GET requests for resolve URLs (of `file` when given)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.file
                    and (not file or r.file == file)]

    # -- the repo contents --------------------------------------------------------------------
    def _repo_dir(self, repo: str) -> Path | None:
        folder = self.root / repo
        return folder if repo.count("/") == 1 and folder.is_dir() else None

    @staticmethod
    def sha(repo: str) -> str:
        """The repo's (fixed) commit id."""
        return hashlib.sha1(repo.encode()).hexdigest()

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def _entry(self, folder: Path, path: Path) -> dict:
        data = path.read_bytes()
        entry = {"type": "file", "path": path.relative_to(folder).as_posix(), "size": len(data),
                 "oid": _blob_etag(data)}
        if path.suffix in LFS_SUFFIXES:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                            "pointerSize": 134}
        return entry

    def _info(self, repo: str, folder: Path) -> dict:
        card = {}
        readme = folder / "README.md"
        if readme.is_file():
            text = readme.read_text()
            if text.startswith("---"):
                card = yaml.safe_load(text.split("---")[1]) or {}
        siblings = []
        for path in self._files(folder):
            entry = self._entry(folder, path)
            sibling = {"rfilename": entry["path"], "size": entry["size"], "blobId": entry["oid"]}
            if "lfs" in entry:
                sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["size"],
                                  "pointerSize": 134}
            siblings.append(sibling)
        return {"id": repo, "modelId": repo, "sha": self.sha(repo), "private": False,
                "gated": False, "disabled": False, "tags": [], "cardData": card,
                "siblings": siblings}

    # -- HTTP ---------------------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # a stuck client cannot hold a handler thread for long

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                      send_body: bool = True) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _not_found(self, code: str, send_body: bool) -> None:
                body = json.dumps({"error": code}).encode()
                self._send(404, body, {"X-Error-Code": code, "Content-Type": "application/json"},
                           send_body)

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?",
                                   path)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                repo = (api or resolve).group(1) if (api or resolve) else ""
                file = resolve.group(3) if resolve else ""
                with server._lock:
                    server.requests.append(Request(self.command, repo, file,
                                                   self.headers.get("Range", "")))
                folder = server._repo_dir(repo) if repo else None
                if folder is None:
                    return self._not_found("RepoNotFound", body)
                if api and api.group(2) == "tree":
                    under = folder / (api.group(4) or "/").lstrip("/")
                    listing = [server._entry(folder, p) for p in server._files(under)]
                    listing += [{"type": "directory", "path": d.relative_to(folder).as_posix(),
                                 "oid": "0" * 40} for d in sorted(under.rglob("*")) if d.is_dir()]
                    data = json.dumps(listing).encode()
                    return self._send(200, data, {"Content-Type": "application/json"}, body)
                if api:
                    data = json.dumps(server._info(repo, folder)).encode()
                    return self._send(200, data, {"Content-Type": "application/json"}, body)
                target = folder / file
                if ".." in Path(file).parts or not target.is_file():
                    return self._not_found("EntryNotFound", body)
                self._file(repo, file, target.read_bytes(), body)

            def _file(self, repo: str, file: str, data: bytes, body: bool) -> None:
                lfs = Path(file).suffix in LFS_SUFFIXES
                etag = hashlib.sha256(data).hexdigest() if lfs else _blob_etag(data)
                headers = {"X-Repo-Commit": server.sha(repo), "ETag": f'"{etag}"',
                           "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
                if lfs:
                    headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": len(data)})
                start, status = 0, 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match:
                    start, status = int(match.group(1)), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                part = data[start:]
                with server._lock:
                    cut = server.drop_once.pop(file, None) if body else None
                if cut is None:
                    return self._send(status, part, headers, body)
                # Promise the whole file, send part of it and hang up: the client sees a
                # connection closed mid-body, as with a network outage.
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, str(value))
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                self.wfile.write(part[:cut])
                self.wfile.flush()
                self.close_connection = True

        return Handler


TINY_REPO = "tester/tiny-sd"
MODEL_CARD = "---\nlicense: creativeml-openrail-m\ntags:\n- stable-diffusion\n---\n# Tiny\n"


def build_tiny_repo(root: Path, repo_id: str = TINY_REPO) -> Path:
    """The tiny-random SD model as a hub repo under `root`: plain and fp16 safetensors weights,
    a model card with a licence, and files a download must skip (a root-level single file, the
    safety checker, a pickle)."""
    import torch

    from webui import tiny

    repo = Path(root) / repo_id
    pipe = tiny.build_pipeline(tiny.TINY_SD)
    # fp16 first: the second save's configs (dtype float32) are the ones kept.
    pipe.to(dtype=torch.float16).save_pretrained(repo, variant="fp16")
    pipe.to(dtype=torch.float32).save_pretrained(repo)
    (repo / "README.md").write_text(MODEL_CARD)
    (repo / "v1-5-pruned.safetensors").write_bytes(b"a single-file checkpoint, never fetched")
    (repo / "safety_checker").mkdir()
    (repo / "safety_checker" / "model.safetensors").write_bytes(b"not used by the engine")
    (repo / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle, never fetched")
    return repo

