"""Routes: the web page at `/` and its static files under `/web/`, shipped in the package (minerva/web)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

from minerva.core.errors import NotFoundError

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
"""What each kind of shipped file is served as; anything else is plain text (licenses, notes)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""The page may load and fetch from this server only; model output cannot pull in anything else."""

CACHE_CONTROL = "no-cache"  # revalidate every time (a 304 costs little); an upgraded server never serves stale files


@dataclass(frozen=True)
class WebAsset:
    """One shipped file: its bytes, media type and entity tag."""

    body: bytes
    media_type: str
    etag: str


@functools.cache
def web_assets() -> dict[str, WebAsset]:
    """Every file under minerva/web by its path relative to it, read once."""
    assets: dict[str, WebAsset] = {}
    pending = [("", resources.files("minerva") / "web")]
    while pending:
        prefix, folder = pending.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((name + "/", entry))
                continue
            body = entry.read_bytes()
            suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
            assets[name] = WebAsset(body, MEDIA_TYPES.get(suffix, "text/plain; charset=utf-8"),
                                    '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def asset_response(request: Request, asset: WebAsset) -> Response:
    """The file, or 304 when the client holds this version already; a page always under the policy."""
    common = {"ETag": asset.etag, "Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if asset.media_type.startswith("text/html"):
        common.update({"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer"})
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=common)
    return Response(asset.body, media_type=asset.media_type, headers=common)


@router.get("/")
async def web_page(request: Request) -> Response:
    """The web page: models, chat, fine-tuning and the server's figures."""
    return asset_response(request, web_assets()["index.html"])


@router.get("/web/{path:path}")
async def web_file(path: str, request: Request) -> Response:
    """A static file of the web page (only files shipped in the package exist here)."""
    asset = web_assets().get(path)
    if asset is None:
        raise NotFoundError(f"No web file '{path}'.")
    return asset_response(request, asset)
