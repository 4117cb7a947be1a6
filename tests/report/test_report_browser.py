"""The report and the live dashboard in a real headless Chromium (Chrome DevTools protocol):
sections drawn, token colours and chart points equal to the store, no network requests, and a
new trajectory appearing on the dashboard without a reload.

Needs Debian's ``chromium`` (scripts/system-packages.txt; scripts/test.sh installs it)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from _report_server import serving
from _report_stores import write_store

from tepo_agent.report import SampleFilter, entropy_colour, scale_max, write_report
from tepo_agent.report.chromium import Chromium, find_chromium
from tepo_agent.report.dashboard import create_dashboard_app
from tepo_agent.report.queries import CURVE_METRICS
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn

SECTION_HEIGHTS = """[...document.querySelectorAll('section')]
    .map(s => [s.id, s.getBoundingClientRect().height])"""


TOKEN_COLOURS = """[...document.querySelectorAll('span.tok')]
    .map(s => getComputedStyle(s).backgroundColor)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    if find_chromium() is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (see scripts/test.sh)")
    with Chromium(width=1280, height=900) as b:
        yield b


def distinct_colours(browser: Chromium, png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct colours among sampled pixels) of a PNG, decoded by the browser."""
    b64 = base64.b64encode(png).decode()
    return tuple(browser.evaluate(f"""new Promise((done) => {{
        const img = new Image();
        img.onload = () => {{
            const c = document.createElement("canvas");
            c.width = img.width; c.height = img.height;
            const ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, c.width, c.height).data, seen = new Set();
            for (let k = 0; k < d.length; k += 4 * 31)
                seen.add((d[k] << 16) | (d[k + 1] << 8) | d[k + 2]);
            done([img.width, img.height, seen.size]);
        }};
        img.src = "data:image/png;base64,{b64}";
    }})"""))  # fmt: skip


def parse_rgb(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text[text.index("(") + 1 : text.index(")")].split(","))


def test_report_in_chromium_matches_the_store_and_loads_nothing(
    browser: Chromium, tmp_path: Path, default_model_dir: Path
) -> None:
    db = tmp_path / "r.db"
    ids = write_store(db, default_model_dir)
    sample = SampleFilter(limit=10)
    out = write_report(db, tmp_path / "report.html", sample, model=default_model_dir)
    url = out.resolve().as_uri()
    browser.requests.clear()
    browser.navigate(url)

    heights = dict(browser.evaluate(SECTION_HEIGHTS))
    assert set(heights) == {"policies", "training", "evaluation", "tools", "trajectories"}
    assert all(h > 40 for h in heights.values()), heights

    # every assistant token of every run: its text and its colour, from the store
    with TrajectoryStore(db, create=False) as store:
        stored = {i: store.get(i) for i in ids}
        steps = store.train_steps()
    top = scale_max(h for t in stored.values() for u in t.assistant_turns() for h in u.entropies)
    page_top = browser.evaluate(
        "JSON.parse(document.getElementById('report-data').textContent).scale.max"
    )
    assert page_top == top
    for tid, traj in stored.items():
        turns = browser.evaluate(f"""[...document.querySelectorAll('article.traj[data-id="{tid}"] .turn.assistant')]
            .map(t => [...t.querySelectorAll('span.tok')].map(s => [s.textContent, getComputedStyle(s).backgroundColor]))""")  # noqa: E501
        assert len(turns) == len(traj.assistant_turns())
        for spans, turn in zip(turns, traj.assistant_turns(), strict=True):
            assert "".join(text for text, _ in spans) == turn.text
            assert len(spans) == len(turn.entropies)
            for (_, colour), h in zip(spans, turn.entropies, strict=True):
                want = entropy_colour(h, top)
                got = parse_rgb(colour)
                assert all(abs(a - b) <= 1 for a, b in zip(got, want, strict=True)), (h, got, want)
    # sure and unsure tokens really look different
    assert len(set(browser.evaluate(TOKEN_COLOURS))) > 3

    # every chart point is a train_steps row, placed by its value
    charts = browser.evaluate("""[...document.querySelectorAll('svg.chart')].map(c => [c.dataset.metric,
        [...c.querySelectorAll('circle.pt')].map(p => [+p.dataset.step, +p.dataset.value, +p.getAttribute('cy')])])""")  # noqa: E501
    keys = [k for k, _ in CURVE_METRICS if any(k in s.metrics for s in steps)]
    assert [k for k, _ in charts] == keys
    for key, points in charts:
        want = [(s.step, s.metrics[key]) for s in steps if key in s.metrics]
        assert [(p[0], p[1]) for p in points] == want
        by_value = sorted(points, key=lambda p: p[1])
        assert [p[2] for p in by_value] == sorted((p[2] for p in points), reverse=True)

    assert browser.requests == [url]  # the page itself, nothing else

    png = browser.screenshot(tmp_path / "report.png").read_bytes()
    width, height, colours = distinct_colours(browser, png)
    assert width == 1280 and height > 900 and colours > 20


def test_dashboard_in_chromium_signs_in_and_shows_a_new_run_without_reload(
    browser: Chromium, tmp_path: Path, default_model_dir: Path
) -> None:
    db = tmp_path / "d.db"
    write_store(db, default_model_dir)
    app = create_dashboard_app(db, api_key="k3y", model=default_model_dir, interval_s=0.3)
    with serving(app) as base:
        browser.requests.clear()
        browser.navigate(f"{base}/")
        assert browser.evaluate("document.querySelector('input[name=key]') !== null")
        browser.evaluate(
            "document.querySelector('input[name=key]').value = 'k3y';"
            "document.querySelector('form').submit(); true"
        )
        browser.wait_for("document.querySelectorAll('article.traj').length === 4", 30)
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
        browser.evaluate("window.__same_document = true")

        new = Trajectory(task="What is 2 + 2?", prompt_token_ids=[1], answer="4", score=1.0,
                         turns=[Turn(role="assistant", token_ids=[30, 31], text="ab",
                                     entropies=[0.2, 2.0], policy_version=1)])  # fmt: skip
        with TrajectoryStore(db) as store:
            store.add(new)
        card = f"document.querySelector('article.traj[data-id=\"{new.id}\"]')"
        browser.wait_for(f"{card} !== null", 20)
        assert browser.evaluate("window.__same_document") is True  # no reload
        assert browser.evaluate(f"{card}.querySelector('.task').textContent") == "What is 2 + 2?"
        assert browser.requests and all(u.startswith(base) for u in browser.requests), (
            browser.requests
        )
        png = browser.screenshot(tmp_path / "dashboard.png", full_page=False).read_bytes()
        width, height, colours = distinct_colours(browser, png)
        assert (width, height) == (1280, 900) and colours > 20
