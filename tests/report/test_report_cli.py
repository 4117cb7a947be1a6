"""`tepo-agent report` end to end: a self-contained file, bounded by the sample, not the store."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from _report_stores import runs, write_store
from transformers import AutoTokenizer

from tepo_agent.cli import main
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, new_id

# anything that would make a browser fetch: a URL in src/href/url()/@import, or a fetch call
_FETCHES = re.compile(
    r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?(https?:|//)|@import|XMLHttpRequest"""
)


def test_report_writes_one_self_contained_page(tmp_path: Path, default_model_dir: Path, capsys):
    db = tmp_path / "r.db"
    ids = write_store(db, default_model_dir)
    out = tmp_path / "out" / "report.html"
    args = ["report", "--db", str(db), "--out", str(out), "--model", str(default_model_dir)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"report: {out.resolve()}"
    page = out.read_text()
    assert page.startswith("<!doctype html>") and not _FETCHES.search(page)
    assert "connect-src 'none'" in page  # the static page may not fetch anything, by policy too
    assert all(i in page for i in ids)
    one = tmp_path / "one.html"
    assert main(["report", "--db", str(db), "--out", str(one), "--trajectory", ids[2]]) == 0
    assert ids[2] in one.read_text() and ids[0] not in one.read_text()
    assert main(["report", "--db", str(tmp_path / "missing.db"), "--out", str(one)]) == 1
    assert "no trajectory database" in capsys.readouterr().err


def _grow(db: Path, model_dir: Path, copies: int) -> None:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    with TrajectoryStore(db) as store:
        for _ in range(copies):
            store.add_many([dataclasses.replace(t, id=new_id()) for t in runs(tok)])


def test_the_page_grows_with_the_sample_not_with_the_store(tmp_path, default_model_dir):
    # the short form of benchmarks/bench_report.py: 40 and 400 runs give pages of one size
    sizes = []
    for copies in (10, 100):
        db = tmp_path / f"{copies}.db"
        _grow(db, default_model_dir, copies)
        out = tmp_path / f"{copies}.html"
        assert main(["report", "--db", str(db), "--out", str(out), "--limit", "10"]) == 0
        sizes.append(out.stat().st_size)
    assert abs(sizes[1] - sizes[0]) / sizes[0] < 0.05, sizes


def test_stored_text_cannot_close_the_pages_script(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    evil = "</script><script>alert(1)</script><!--"
    with TrajectoryStore(db) as store:
        store.add(Trajectory(task=evil, prompt_token_ids=[1], answer=evil))
    out = tmp_path / "x.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    page = out.read_text()
    assert evil not in page and "alert(1)" in page  # kept, as data, with "<" escaped
    assert page.count("</script>") == 3  # the data, the live config and the page script
