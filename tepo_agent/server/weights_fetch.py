"""``POST /v1/fetch_weights``: copy a published version from another host, verified, before loading.

A replica on a host that does not share the publisher's filesystem gets a version this way: the
fleet follower (:mod:`tepo_agent.policy.fleet`) asks it to fetch the version from the
publisher's weights server (:mod:`tepo_agent.policy.weights_server`), then to load the local copy
with the usual ``/v1/reload_weights`` or ``/v1/load_lora_adapter``. Body::

    {"manifest_url": "http://publisher:8100/versions/<sha256>/manifest.json",
     "sha256": "<the digest recorded when the version was published>",
     "token": "<the weights server's bearer token, if it has one>"}

The manifest must hash to ``sha256`` and every file to the manifest's entry (size and sha256),
else the answer is 422 (the version named could not be fetched as published) and nothing is
kept: a corrupted or tampered transfer is never loaded.
The verified copy lands in ``<weights root>/fetched/<sha256>`` (``serve --weights-root``; without
it ``$TEPO_AGENT_HOME/fetched-weights``), renamed into place whole, and a copy already there is
re-hashed and reused. Answers ``{"path", "sha256", "bytes", "reused"}``. Admin key only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from tepo_agent.errors import PublishError
from tepo_agent.paths import default_home
from tepo_agent.policy.manifest import Manifest, build_manifest, check_relative
from tepo_agent.server.protocol import OpenAIHTTPError
from tepo_agent.server.validation import ServeLimits, parse_body


class FetchWeightsRequest(BaseModel):
    """``POST /v1/fetch_weights`` (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    manifest_url: str = Field(min_length=1, pattern=r"^https?://")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    token: str | None = None


def fetch_root(limits: ServeLimits) -> Path:
    """Where fetched versions are kept (inside the weights root, so they may be loaded)."""
    if limits.weights_root is not None:
        return Path(limits.weights_root) / "fetched"
    return default_home() / "fetched-weights"


async def fetch_weights(request: Request) -> Any:
    req: FetchWeightsRequest = await parse_body(request, FetchWeightsRequest)
    root = fetch_root(request.app.state.tepo_limits)
    target = root / req.sha256
    if target.is_dir():
        if await asyncio.to_thread(_digest_or_none, target) == req.sha256:
            return _answer(target, req.sha256, reused=True)
        await asyncio.to_thread(shutil.rmtree, target, True)  # damaged on disk: fetch again
    headers = {"Authorization": f"Bearer {req.token}"} if req.token else {}
    try:
        timeout = httpx.Timeout(120.0, connect=5.0)
        async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
            manifest = await _manifest(client, req)
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{req.sha256[:12]}.", dir=root))
            try:
                base = req.manifest_url.rsplit("/", 1)[0]
                for entry in manifest.files:
                    await _download(client, f"{base}/files/{entry.path}", tmp, entry)
                try:
                    os.replace(tmp, target)
                except OSError:
                    if not target.is_dir():  # not a concurrent fetch of the same version
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (httpx.HTTPError, httpx.InvalidURL, PublishError, OSError, ValueError) as exc:
        raise OpenAIHTTPError(
            422, f"fetching {req.manifest_url} failed, nothing was kept or loaded: {exc}"
        ) from exc
    return _answer(target, req.sha256, reused=False)


async def _manifest(client: httpx.AsyncClient, req: FetchWeightsRequest) -> Manifest:
    response = await client.get(req.manifest_url)
    if response.status_code != 200:
        raise PublishError(f"the manifest answered HTTP {response.status_code}")
    try:
        manifest = Manifest.from_json(response.json())
    except ValueError as exc:
        raise PublishError(f"the manifest is not JSON: {exc}") from exc
    if manifest.sha256 != req.sha256:
        raise PublishError(
            f"the manifest hashes to {manifest.sha256}, not the published {req.sha256}: refused"
        )
    return manifest


async def _download(client: httpx.AsyncClient, url: str, tmp: Path, entry: Any) -> None:
    """Stream one file into ``tmp``, refusing a wrong size or sha256."""
    path = tmp / check_relative(entry.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise PublishError(f"{entry.path}: HTTP {response.status_code}")
        with path.open("wb") as fh:
            async for chunk in response.aiter_bytes(1 << 20):
                size += len(chunk)
                if size > entry.size:
                    raise PublishError(f"{entry.path}: more than the {entry.size} bytes published")
                digest.update(chunk)
                fh.write(chunk)
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise PublishError(
            f"{entry.path}: received {size} bytes hashing to {digest.hexdigest()}, published "
            f"{entry.size} bytes hashing to {entry.sha256}: the transfer is corrupted, refused"
        )


def _digest_or_none(directory: Path) -> str | None:
    try:
        return build_manifest(directory).sha256
    except PublishError:
        return None


def _answer(target: Path, sha256: str, *, reused: bool) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return {"path": str(target), "sha256": sha256, "bytes": size, "reused": reused}


ROUTES = (("POST", "/v1/fetch_weights", fetch_weights),)

__all__ = ["ROUTES", "FetchWeightsRequest", "fetch_root", "fetch_weights"]
