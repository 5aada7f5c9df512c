"""What the explorer lets in: loopback hosts only, a token per launch, JSON-only bounded API bodies, and image
files only from the results root or a run's dataset folder.

Why: a web page the user merely visits can reach a loopback server (DNS rebinding defeats the same-origin rule,
plain form posts need no preflight). The host check stops rebinding, the token stops every other page, and the
path rule keeps a caller who has the token to the images the runs already read (Jupyter's answer, here).
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_HINT = ("open the link `mapcap explorer` printed (http://127.0.0.1:PORT/?token=…), or send the token as the "
              "header 'Authorization: Bearer TOKEN'")
BODY_SLACK = 256 * 1024  # texts, model names and JSON around a base64 upload


def new_token() -> str:
    """A fresh secret for one launch (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: upload (and image file) size, texts per request, characters per text."""
    max_upload_mb: float = 25.0
    max_texts: int = 64
    max_text_chars: int = 300

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_body_bytes(self) -> int:
        """A JSON body carrying the largest upload as base64 (4 bytes per 3), plus room for the rest."""
        return math.ceil(self.max_upload_bytes * 4 / 3) + BODY_SLACK

    def upload_too_large(self, what: str, n_bytes: int) -> str:
        return (f"{what} is {n_bytes / 1024 / 1024:.1f} MB; the limit is {self.max_upload_mb:g} MB "
                f"(start the explorer with --max-upload-mb to change it)")


def host_name(header: str) -> str | None:
    """The host of a Host header without port or IPv6 brackets, lower-case; None when it does not parse."""
    try:
        return urlsplit(f"//{header}").hostname
    except ValueError:  # a bad port or bracket: not a host we serve
        return None


class Guard:
    """ASGI middleware in front of the whole app: Host check (403), token on everything but the page (401),
    JSON-only POSTs (415), bounded bodies (413). It never adds CORS headers, so no other origin can read."""

    def __init__(self, app: ASGIApp, token: str | None, allow_hosts: tuple[str, ...] = (),
                 limits: Limits = Limits()):
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = {h.strip("[]").lower() for h in (*LOOPBACK_HOSTS, *allow_hosts)}
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            await _reply(send, 403, f"host {headers.get('host', '')!r} is not served: the explorer answers "
                                    f"{sorted(self.hosts)} only; start it with --allow-host NAME for a proxy")
            return
        method, path = scope["method"], scope["path"]
        if path == "/" and method in ("GET", "HEAD"):  # the page itself: static, no data; it asks for the token
            await self.app(scope, receive, send)
            return
        if self.token is not None and not self._token_ok(headers.get("authorization", "")):
            await _reply(send, 401, f"missing or wrong token: {TOKEN_HINT}", {"www-authenticate": "Bearer"})
            return
        if method in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            await _reply(send, 415, f"{method} {path} takes JSON only (Content-Type: application/json), "
                                    f"got {content_type or 'no Content-Type'!r}")
            return
        body = await self._bounded_body(headers, receive)
        if body is None:
            await _reply(send, 413, f"request body over {self.limits.max_body_bytes / 1024 / 1024:.1f} MB "
                                    f"(uploads up to {self.limits.max_upload_mb:g} MB; start the explorer with "
                                    f"--max-upload-mb to change it)")
            return
        await self.app(scope, _replay(body, receive), send)

    def _token_ok(self, authorization: str) -> bool:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("latin-1"), self.token)

    async def _bounded_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it (declared or streamed) passes the limit."""
        cap = self.limits.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the app the body already read, then passes on the real one (the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def local_folder(location: str) -> Path | None:
    """An absolute local folder for a path (`~` expanded, `file://` accepted); None for URLs (s3://…) and for
    relative paths, whose meaning depended on where the run was started."""
    if location.startswith("file://"):
        location = location[len("file://"):]
    elif "://" in location:
        return None
    path = Path(location).expanduser()
    return path.resolve() if path.is_absolute() else None


def allowed_folders(root: str, datasets: list[str]) -> list[Path]:
    """The results root (when local) and each run's local dataset folder (a manifest's own folder)."""
    rootp = Path(root[len("file://"):] if root.startswith("file://") else root).expanduser()
    folders = [] if "://" in root else [rootp.resolve()]
    for dataset in datasets:
        folder = local_folder(dataset)
        if folder is not None:
            folders.append(folder if folder.is_dir() or not folder.suffix else folder.parent)
    return list(dict.fromkeys(folders))


class PathRefused(PermissionError):
    """An image_path outside every allowed folder; the message is the same whether the file exists or not."""


def check_image_path(given: str, folders: list[Path]) -> Path:
    """The resolved file (symlinks followed, `..` gone) when it lies inside an allowed folder; else PathRefused,
    saying nothing about the file itself."""
    refused = PathRefused(f"image_path {given!r} is not inside the results root or the dataset folder of one of "
                          f"its runs ({', '.join(map(str, folders)) or 'none'}); upload the image instead")
    return resolve_inside(given, folders, refused)


def resolve_inside(given: str, folders: list[Path], refused: PathRefused) -> Path:
    """The resolved path (symlinks followed, `..` gone) when it lies inside one of `folders`; else `refused`,
    whatever the path is (missing, a loop, not a path at all)."""
    try:
        resolved = Path(given).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL byte: refused like any other
        raise refused from e
    if not any(resolved.is_relative_to(f) for f in folders):
        raise refused
    return resolved


__all__ = ["Guard", "Limits", "PathRefused", "allowed_folders", "check_image_path", "new_token", "resolve_inside"]
