"""What a published policy directory holds, by content: each file's size and sha256, and one digest.

A replica on another host fetches a version's files over HTTP (:mod:`.weights_server`,
:mod:`tepo_agent.server.weights_fetch`) and loads them only when every file hashes to what the
manifest says and the manifest hashes to the digest the follower expects: the digest recorded
with the version at publish time (``PolicyRecord.metrics["sha256"]``), or computed from the
publisher's copy for versions published before digests were recorded.

The digest is the sha256 of the manifest's lines ``"<sha256>  <size>  <relative path>\\n"``,
sorted by path (POSIX separators). Hidden files (a name starting with ``.``) are left out: they
are temporary files of an atomic write, never part of a published version.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.errors import PublishError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path relative to the directory, size in bytes and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A version directory's files and the digest over them."""

    files: tuple[FileEntry, ...]

    @property
    def sha256(self) -> str:
        return manifest_digest(self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    @classmethod
    def from_json(cls, body: Any) -> Manifest:
        """Parse a manifest; a malformed one raises :class:`PublishError`."""
        try:
            files = tuple(
                FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in body["files"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PublishError(f"malformed weights manifest: {exc!r}") from exc
        for entry in files:
            check_relative(entry.path)
        return cls(files)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    """The sha256 over the sorted ``"<sha256>  <size>  <path>\\n"`` lines (module docstring)."""
    lines = sorted(f"{f.sha256}  {f.size}  {f.path}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def build_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Hash every regular, non-hidden file under ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        raise PublishError(f"{root} is not a directory: cannot hash a published version there")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(FileEntry(rel.as_posix(), path.stat().st_size, file_sha256(path)))
    if not files:
        raise PublishError(f"{root} holds no files: nothing to publish")
    return Manifest(tuple(files))


def directory_sha256(directory: str | os.PathLike[str]) -> str:
    """The digest of ``directory`` (what publishing records as ``metrics["sha256"]``)."""
    return build_manifest(directory).sha256


def check_relative(path: str) -> str:
    """``path`` if it is a plain relative POSIX path inside its directory, else PublishError."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise PublishError(f"a manifest names the file {path!r}, which is not inside the version")
    return path


__all__ = [
    "FileEntry",
    "Manifest",
    "build_manifest",
    "check_relative",
    "directory_sha256",
    "file_sha256",
    "manifest_digest",
]
