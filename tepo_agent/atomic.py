"""Atomic directory publication: build in a temporary sibling, then rename into place.

A reader (another process, a hot swap, a crashed run's successor) sees either no directory or a
complete one, never half of one: :func:`publish_directory` fills a fresh temporary directory next
to the target (same filesystem, so the rename is atomic) and renames it to the target. Used for the
cached default models (several processes may build the same one at once: one wins, the others
discard their copy) and for the trainer's checkpoints and published policies.
:func:`write_text_atomic` does the same for one small file (a pointer, a marker).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def publish_directory(
    target: Path,
    fill: Callable[[Path], None],
    *,
    is_complete: Callable[[Path], bool] = lambda _: False,
) -> Path:
    """Create ``target`` by calling ``fill`` on an empty temporary sibling and renaming it.

    Args:
        target: The directory to create; its parent is created if missing. A non-empty existing
            ``target`` makes the rename fail (callers that must never reuse a name check first).
        fill: Writes the directory's contents into the path it is given (empty, existing).
        is_complete: Whether a ``target`` that appeared meanwhile is a finished copy (another
            process won the race): the rename's failure is then not an error and this copy is
            discarded. By default every failure to rename is raised.

    Returns:
        ``target``. The temporary directory is removed whatever happens.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_complete(target):
                raise  # not a lost race: a real failure to move the directory into place
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a uniquely named temporary sibling and ``os.replace``: a reader sees
    the old content or the new, never a partial file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["publish_directory", "write_text_atomic"]
