"""The ``search`` tool: BM25 search over a local corpus in an SQLite FTS5 index.

:func:`build_index` reads a JSON-lines corpus, one ``{"id", "title", "text"}`` object per line,
into a ``docs`` table with an FTS5 index over title and text (porter stemming), written with
sqlite-utils. :class:`SearchIndex` opens that file read-only and ranks with FTS5's ``bm25()``.
Queries are free text: every word is quoted and the words are OR-ed, so FTS5 syntax in user
text (``AND``, ``"``, ``*``, ``:``, parentheses) never raises; BM25 ranks documents matching
more and rarer words first.

Build and query from the shell::

    tepo-agent index corpus.jsonl --out kb.db
    tepo-agent tool search '{"query": "capital of France"}' --search-db kb.db
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.errors import ConfigError, ToolError

MAX_QUERY_TERMS = 32
"""Words of a query beyond this many are ignored."""

_TABLE = "docs"
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class SearchHit:
    """One ranked document."""

    id: str
    title: str
    snippet: str
    """Matching passage of the text, matched words in [brackets]."""
    score: float
    """FTS5 ``bm25()``: lower (more negative) is better."""


def _read_corpus(corpus_jsonl: Path) -> Iterator[dict[str, str]]:
    seen: set[str] = set()
    with open(corpus_jsonl, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{corpus_jsonl}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{where}: expected an object with id, title and text")
            for key in ("id", "title", "text"):
                if not isinstance(record.get(key), str):
                    raise ConfigError(f"{where}: field {key!r} must be a string")
            if record["id"] in seen:
                raise ConfigError(f"{where}: duplicate id {record['id']!r}; ids must be unique")
            seen.add(record["id"])
            yield {"id": record["id"], "title": record["title"], "text": record["text"]}


def build_index(corpus_jsonl: str | Path, db_path: str | Path) -> int:
    """Index a JSON-lines corpus into ``db_path`` (replacing an earlier index there).

    Returns the number of documents indexed. Raises :class:`ConfigError` for a missing file or
    a malformed line (the message names the line).
    """
    corpus_jsonl, db_path = Path(corpus_jsonl), Path(db_path)
    if not corpus_jsonl.is_file():
        raise ConfigError(f"corpus file {corpus_jsonl} does not exist")
    db = sqlite_utils.Database(db_path)
    try:
        with db.conn:
            if _TABLE in db.table_names():
                table = db.table(_TABLE)
                if table.detect_fts():
                    table.disable_fts()
                table.drop()
            table = db.table(_TABLE)
            table.create({"id": str, "title": str, "text": str}, pk="id")
            table.insert_all(_read_corpus(corpus_jsonl), batch_size=1000)
            table.enable_fts(["title", "text"], tokenize="porter")
            count = table.count
        db.execute("VACUUM")
    finally:
        db.close()
    return count


def fts_query(text: str) -> str | None:
    """Turn free text into a safe FTS5 query: quoted words joined by OR (``None`` if no words)."""
    words = list(dict.fromkeys(word.lower() for word in _WORD.findall(text)))
    if not words:
        return None
    return " OR ".join(f'"{word}"' for word in words[:MAX_QUERY_TERMS])


class SearchIndex:
    """Read-only BM25 search over an index written by :func:`build_index`."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise ConfigError(
                f"search index {self.db_path} does not exist; build it with "
                "`tepo-agent index CORPUS.jsonl --out DB` or tepo_agent.tools.search.build_index"
            )
        # Tools may be called from worker threads: one connection, serialised by a lock.
        self._conn = sqlite3.connect(
            f"{self.db_path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        self._lock = threading.Lock()
        tables = {row[0] for row in self._conn.execute("select name from sqlite_master")}
        if not {_TABLE, f"{_TABLE}_fts"} <= tables:
            self._conn.close()
            raise ConfigError(
                f"{self.db_path} is not a search index (no {_TABLE}/{_TABLE}_fts tables); "
                "build it with `tepo-agent index CORPUS.jsonl --out DB`"
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute(f"select count(*) from {_TABLE}").fetchone()[0])

    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        """The ``k`` best documents for free-text ``query``, best first (empty if no words)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        match = fts_query(query)
        if match is None:
            return []
        sql = f"""
            select {_TABLE}.id, {_TABLE}.title,
                   snippet({_TABLE}_fts, 1, '[', ']', '…', 24), bm25({_TABLE}_fts)
            from {_TABLE}_fts join {_TABLE} on {_TABLE}.rowid = {_TABLE}_fts.rowid
            where {_TABLE}_fts match ? order by bm25({_TABLE}_fts) limit ?
        """
        with self._lock:
            try:
                rows = self._conn.execute(sql, (match, k)).fetchall()
            except sqlite3.Error as exc:
                raise ToolError(f"search failed for {query!r}: {exc}") from exc
        return [SearchHit(str(i), str(t), str(s), float(b)) for i, t, s, b in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def format_hits(hits: list[SearchHit]) -> str:
    """Compact text for the model: one numbered line per hit, title then snippet."""
    if not hits:
        return "No results. Try other or fewer keywords."
    return "\n".join(
        f"{rank}. {hit.title} (id {hit.id}): {hit.snippet}" for rank, hit in enumerate(hits, 1)
    )


class SearchArgs(BaseModel):
    query: str = Field(description="Keywords to search for, e.g. 'Marie Curie birthplace'.")
    k: int = Field(default=5, ge=1, le=20, description="How many results to return (1-20).")


def make_search_tool(db_path: str | Path) -> BaseTool:
    """The LangChain ``search`` tool over the index at ``db_path``."""
    index = SearchIndex(db_path)

    def search(query: str, k: int = 5) -> str:
        return format_hits(index.search(query, k))

    return StructuredTool.from_function(
        func=search,
        name="search",
        description=(
            "Search the local knowledge base by keywords and return the best matching "
            "documents (title and a snippet). Search again with new keywords for each hop of "
            "a multi-step question."
        ),
        args_schema=SearchArgs,
        handle_tool_error=True,  # ToolError reaches the model as an error ToolMessage
    )


__all__ = [
    "MAX_QUERY_TERMS",
    "SearchArgs",
    "SearchHit",
    "SearchIndex",
    "build_index",
    "format_hits",
    "fts_query",
    "make_search_tool",
]
