"""Weights across hosts: a replica fetches a published version over HTTP, verified by sha256.

Real files, a real weights server and a real ``tepo-agent serve`` app (uvicorn) on 127.0.0.1;
the replica's weights directory is not the publisher's.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load_file

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import PublishError
from tepo_agent.policy.manifest import FileEntry, build_manifest, manifest_digest
from tepo_agent.policy.weights_server import WeightsServer
from tepo_agent.server.app import create_app
from tepo_agent.server.validation import ServeLimits

sys.path.insert(0, str(Path(__file__).parent / "trainer"))
from _tepo_data import make_model
from test_serve import LiveServer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The replica's base model and a different published version (the publisher's host)."""
    root = tmp_path_factory.mktemp("publisher")
    return make_model(root / "base", seed=0), make_model(root / "policy-v1", seed=1)


@pytest.fixture(scope="module")
def replica(
    models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, TransformersBackend, Path]]:
    """A serve app whose weights root is its own directory (another "host")."""
    root = tmp_path_factory.mktemp("replica-host")
    backend = TransformersBackend.from_pretrained(models[0], device="cpu", dtype="float32")
    app = create_app(
        backend,
        ChatFormat.from_pretrained(models[0]),
        model_name="m",
        limits=ServeLimits(weights_root=root),
    )
    with LiveServer(app) as live:
        yield live.url, backend, root
    backend.close()


def test_the_digest_covers_every_file_and_skips_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub" / "b.txt").write_bytes(b"")
    (tmp_path / ".tmp-partial").write_bytes(b"half a file")
    manifest = build_manifest(tmp_path)
    sha_abc = hashlib.sha256(b"abc").hexdigest()
    sha_empty = hashlib.sha256(b"").hexdigest()
    assert manifest.files == (FileEntry("a.bin", 3, sha_abc), FileEntry("sub/b.txt", 0, sha_empty))
    lines = f"{sha_abc}  3  a.bin\n{sha_empty}  0  sub/b.txt\n"
    assert manifest.sha256 == hashlib.sha256(lines.encode()).hexdigest()
    assert manifest_digest(list(reversed(manifest.files))) == manifest.sha256  # order-free
    (tmp_path / "a.bin").write_bytes(b"abd")
    assert build_manifest(tmp_path).sha256 != manifest.sha256


def test_the_weights_server_serves_only_offered_files_and_checks_its_token(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "w.bin").write_bytes(b"\x00\x01weights")
    (tmp_path / "secret.txt").write_text("not published")
    with WeightsServer(token="t0k") as server:
        url = server.offer(tmp_path / "v1")
        auth = {"Authorization": "Bearer t0k"}
        assert httpx.get(url).status_code == 401
        manifest = httpx.get(url, headers=auth).json()
        assert [f["path"] for f in manifest["files"]] == ["w.bin"]
        base = url.rsplit("/", 1)[0]
        assert httpx.get(f"{base}/files/w.bin", headers=auth).content == b"\x00\x01weights"
        for probe in ("files/../secret.txt", "files/%2e%2e/secret.txt", "files/nope"):
            assert httpx.get(f"{base}/{probe}", headers=auth).status_code == 404
        assert (
            httpx.get(f"{server.url}/versions/{'0' * 64}/manifest.json", headers=auth).status_code
            == 404
        )
        with pytest.raises(PublishError, match="modified after publishing"):
            server.offer(tmp_path / "v1", sha256="f" * 64)


def test_a_replica_fetches_verifies_and_loads_a_version_from_another_directory(
    models: tuple[Path, Path], replica: tuple[str, TransformersBackend, Path]
) -> None:
    url, backend, root = replica
    published = models[1]
    digest = build_manifest(published).sha256
    with WeightsServer() as server:
        body: dict[str, Any] = {"manifest_url": server.offer(published, digest), "sha256": digest}
        fetched = httpx.post(f"{url}/v1/fetch_weights", json=body, timeout=60)
        again = httpx.post(f"{url}/v1/fetch_weights", json=body, timeout=60)
    assert fetched.status_code == 200, fetched.text
    local = Path(fetched.json()["path"])
    assert local == root / "fetched" / digest and local != published
    assert fetched.json()["reused"] is False and again.json()["reused"] is True
    assert build_manifest(local).sha256 == digest
    loaded = httpx.post(
        f"{url}/v1/reload_weights", json={"weights_path": str(local), "version": 1}, timeout=60
    )
    assert loaded.status_code == 200, loaded.text
    want = load_file(str(published / "model.safetensors"))
    served = backend.model.state_dict()
    assert all(bool((served[k] == v).all()) for k, v in want.items())
    assert backend.policy_version == 1


def test_a_corrupted_transfer_is_refused_and_nothing_is_kept(
    models: tuple[Path, Path], replica: tuple[str, TransformersBackend, Path], tmp_path: Path
) -> None:
    url, backend, root = replica
    copy = shutil.copytree(models[1], tmp_path / "policy-v2")
    (copy / "published.txt").write_text("v2")  # another version: not in the replica's cache
    with WeightsServer() as server:
        manifest_url = server.offer(copy)  # the digest of the files as published
        digest = manifest_url.split("/")[-2]
        weights = copy / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte, the size unchanged
        weights.write_bytes(bytes(data))
        refused = httpx.post(
            f"{url}/v1/fetch_weights",
            json={"manifest_url": manifest_url, "sha256": digest},
            timeout=60,
        )
        wrong = httpx.post(
            f"{url}/v1/fetch_weights",
            json={"manifest_url": manifest_url, "sha256": "e" * 64},
            timeout=60,
        )
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert "model.safetensors" in message and "corrupted, refused" in message
    assert wrong.status_code == 422 and "not the published" in wrong.json()["error"]["message"]
    fetched = root / "fetched"
    assert not (fetched / digest).exists()
    assert not [p for p in fetched.iterdir() if p.name.startswith(".")]  # no partial copy left
    assert backend.policy_version != 2
