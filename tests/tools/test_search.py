"""The FTS5 search index: building from JSON lines, BM25 ranking, safe queries, the tool."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from tepo_agent.errors import ConfigError
from tepo_agent.tools.search import SearchIndex, build_index, fts_query, make_search_tool

DOCS = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
    {"id": "lyon", "title": "Lyon", "text": "Lyon is a city in France, known for its food."},
    {"id": "curie", "title": "Marie Curie", "text": "Marie Curie was born in Warsaw in 1867."},
    {"id": "runner", "title": "Marathon", "text": "She was running a marathon in Berlin."},
]


def write_corpus(path: Path, docs: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    return path


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    db = tmp_path / "kb.db"
    assert build_index(write_corpus(tmp_path / "corpus.jsonl", DOCS), db) == len(DOCS)
    return db


def test_best_match_ranks_first(index_path: Path) -> None:
    hits = SearchIndex(index_path).search("capital of France", k=3)
    assert [hit.id for hit in hits][:2] == ["paris", "berlin"]
    assert hits[0].title == "Paris"
    assert "[capital]" in hits[0].snippet and "[France]" in hits[0].snippet
    assert hits[0].score <= hits[1].score  # bm25(): lower is better


def test_k_limits_the_number_of_hits(index_path: Path) -> None:
    index = SearchIndex(index_path)
    assert len(index.search("France Berlin capital city", k=2)) == 2
    assert len(index.search("France Berlin capital city", k=10)) == 4
    assert len(index) == len(DOCS)


def test_stemming_matches_word_forms(index_path: Path) -> None:
    assert [hit.id for hit in SearchIndex(index_path).search("runs")] == ["runner"]


@pytest.mark.parametrize(
    "query",
    ['"unbalanced', "capital AND", "NEAR(", "title:*", "a OR OR b", "^-:()*", "'; drop table docs"],
)
def test_fts5_syntax_in_user_text_never_raises(index_path: Path, query: str) -> None:
    SearchIndex(index_path).search(query)


def test_query_without_words_returns_nothing(index_path: Path) -> None:
    assert SearchIndex(index_path).search("?!  ...") == []
    assert fts_query("?!") is None
    assert fts_query('Capital "of" capital') == '"capital" OR "of"'


def test_rebuilding_replaces_the_previous_index(tmp_path: Path, index_path: Path) -> None:
    corpus = write_corpus(tmp_path / "new.jsonl", DOCS[:2])
    assert build_index(corpus, index_path) == 2
    assert [hit.id for hit in SearchIndex(index_path).search("Lyon")] == []
    with sqlite3.connect(index_path) as conn:
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["not json"], "corpus.jsonl:1: not valid JSON"),
        (['{"id": "a", "title": "t"}'], "field 'text' must be a string"),
        (["[1, 2]"], "expected an object"),
        (['{"id": "a", "title": "t", "text": "x"}'] * 2, "corpus.jsonl:2: duplicate id 'a'"),
    ],
)
def test_malformed_corpus_lines_are_reported(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        build_index(corpus, tmp_path / "out.db")


def test_missing_or_foreign_database_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tepo-agent index"):
        SearchIndex(tmp_path / "absent.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    with pytest.raises(ConfigError, match="not a search index"):
        SearchIndex(other)


def test_search_tool_formats_hits_compactly(index_path: Path) -> None:
    tool = make_search_tool(index_path)
    assert tool.name == "search" and set(tool.args) == {"query", "k"}
    text = tool.invoke({"query": "Marie Curie born", "k": 1})
    assert text.startswith("1. Marie Curie (id curie): ")
    assert "[born]" in text and "\n" not in text
    assert tool.invoke({"query": "zebra"}) == "No results. Try other or fewer keywords."


def test_search_tool_works_from_several_threads(index_path: Path) -> None:
    tool = make_search_tool(index_path)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(tool.invoke({"query": "Paris"})))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r.startswith("1. Paris") for r in results)
