"""Every document the repository cites by file name is in the repository.

Comments, docstrings and documents cite documents by relative name ("docs/architecture.md,
invariant 1", "see benchmarks/RESULTS.md"). A name resolves if it exists relative to the citing
file's folder or to the repository root, inside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED_SUFFIXES = (".py", ".md", ".toml")
SKIPPED_DIRS = {"build", "dist", "node_modules", "__pycache__"}
WRITTEN = {"compare.md"}
"""Markdown files the product writes (``tepo-agent compare`` writes ``OUT/compare.md``): names of
outputs, not documents the repository cites."""

_URL = re.compile(r"[a-z]+://\S+")
_DOC_NAME = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)*[\w-][\w./-]*\.md)(?![\w/-])")


def _repository_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and path.suffix in SCANNED_SUFFIXES:
            files.append(path)
    return files


def cited_documents(text: str) -> list[str]:
    """The document file names ``text`` cites (web addresses left out)."""
    return _DOC_NAME.findall(_URL.sub(" ", text))


def resolves(name: str, citing_file: Path) -> bool:
    for base in (citing_file.parent, REPO):
        candidate = (base / name).resolve()
        if candidate.is_relative_to(REPO) and candidate.is_file():
            return True
    return False


def test_the_name_pattern_finds_citations_and_skips_addresses():
    text = (
        "see docs/guide.md, or ../outside/notes.md, (README.md) and `benchmarks/RESULTS.md`; "
        "not https://example.org/page.md nor something.mdx"
    )
    assert cited_documents(text) == [
        "docs/guide.md",
        "../outside/notes.md",
        "README.md",
        "benchmarks/RESULTS.md",
    ]
    assert resolves("docs/guide.md", REPO / "tepo_agent" / "entropy.py")
    assert resolves("RESULTS.md", REPO / "benchmarks" / "MOONSHOT.md")
    assert not resolves("../outside/notes.md", REPO / "README.md")


def test_every_cited_document_is_in_the_repository():
    files = _repository_files()
    assert REPO / "docs" / "architecture.md" in files
    this_file = Path(__file__).resolve()  # its examples cite documents that do not exist
    missing = [
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        if path != this_file
        for name in cited_documents(path.read_text(encoding="utf-8", errors="replace"))
        if not resolves(name, path) and Path(name).name not in WRITTEN
    ]
    assert missing == []
