"""`arhn review` as a user drives it: a source of one's own with no reference (four sample queries and one
hostile row), its gate withheld for want of a reference; the review page served by the real command, answered
in Debian's chromium by keyboard, reloaded and resumed; the hostile passage shown as text (its script never
runs); then the partition's judges qualified on the reviews, with an interval, in `arhn qualify`. Screenshots
in test-artifacts/review/."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arhn_pipeline_tests.conftest import PROJECT, write_jsonl, write_registry
from arhn_pipeline_tests.test_cli import run
from arhn_pipeline_tests.test_ui_browser import CHROMIUM, require_chromium

pytestmark = pytest.mark.browser
ARTIFACTS = PROJECT / "test-artifacts" / "review"
BIN = Path(sys.executable).parent
HOSTILE = {
    "query_id": "hostile",
    "query": "what does <b>this</b> page run",
    "pos": ["A positive that closes a tag </div></main> and opens a comment <!-- here."],
    "neg": ['<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2"> plain words'],
}
KEYS = {"false_negative": "1", "ambiguous": "4", "negative": "3"}


def _labels() -> dict[tuple[str, str], str]:
    rows = (json.loads(line) for line in (PROJECT / "data" / "samples" / "labels.jsonl").open())
    return {(r["query_id"], r["passage_key"]): r["label"] for r in rows}


@pytest.fixture
def own_source(tmp_path):
    require_chromium()
    geo = [json.loads(line) for line in (PROJECT / "data" / "samples" / "sample_geo.jsonl").open()][:4]
    source = write_jsonl(tmp_path / "mine.jsonl", geo + [HOSTILE])
    registry = write_registry(tmp_path / "sources.yaml", {"mine": {"format": "bge", "path": str(source)}})
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    env = dict(
        os.environ,  # the test's own ARHN_DB / ARHN_VAR_DIR (conftest), and these:
        DAGSTER_HOME=str(home),
        ARHN_SOURCES=str(registry),
        ARHN_ENGINE="scripted",
        ARHN_SCRIPT="sample_oracle",
    )
    arhn(env, "sources", "sync")
    arhn(env, "run", "--subset", "mine", "--no-train")
    return env


def arhn(env: dict, *args: str) -> str:
    return run([BIN / "arhn", *args], env, timeout=600)


def test_review_by_keyboard_resume_after_reload_and_the_gate_moves_to_a_measured_interval(own_source):
    from playwright.sync_api import sync_playwright

    env = own_source
    before = arhn(env, "qualify", "--subset", "mine")
    assert "withheld: no reference entry measured this judge, and no reviews of this partition" in before

    server = subprocess.Popen(
        [BIN / "arhn", "review", "--subset", "mine", "--sample", "100"],
        env=env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    printed = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            printed.append(line)
            found = re.search(r"review page: (http://127\.0\.0\.1:\d+/\S+/)", line)
            url = found.group(1) if found else None
        assert url, "".join(printed)
        assert "drew 41 items" in "".join(printed)  # 4 queries x 10 negatives + the hostile one: all drawn
        labels = _labels()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            try:
                page.goto(url)
                page.fill("#reviewer", "ann")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                answered, hostile_seen = 0, False
                while True:
                    if page.locator("#done").count():
                        break
                    page.locator("#candidate").wait_for()
                    body = page.locator("body").inner_text()
                    # blind: nothing on the item page says what a method decided
                    assert not re.search(r"to_positive|drop_negative|What each method decided", body)
                    qid = page.locator("input[name=query_id]").get_attribute("value")
                    pid = page.locator("input[name=passage_id]").get_attribute("value")
                    if qid == "hostile":
                        hostile_seen = True
                        page.screenshot(path=ARTIFACTS / "hostile.png")
                        assert "<script>window.__pwned = 1</script>" in page.locator("#candidate").inner_text()
                        assert page.evaluate("window.__pwned") is None
                        assert page.locator("#candidate script, #candidate img").count() == 0
                        assert "<b>this</b>" in page.locator("#query").inner_text()
                    key = KEYS[labels.get((qid, pid), "negative")]
                    with page.expect_navigation():
                        page.keyboard.press(key)
                    answered += 1
                    if answered == 10:
                        page.reload()  # resume: the page goes on from the next unanswered item
                        assert "10 by ann" in page.locator("#progress").inner_text()
                    if answered == 20:
                        page.screenshot(path=ARTIFACTS / "twenty-answered.png")
                        assert "20 of 41 items reviewed" in page.locator("#progress").inner_text()
                        assert page.locator("#estimate").count() == 1  # the current estimate is shown
                page.screenshot(path=ARTIFACTS / "done.png")
                assert page.evaluate("window.__pwned") is None
            finally:
                browser.close()
        assert answered == 41 and hostile_seen
    finally:
        os.killpg(server.pid, signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    assert "41 answers this session" in out and "41 reviews of 41 items drawn, by ann" in out

    arhn(env, "run", "--subset", "mine", "--no-train")
    after = arhn(env, "qualify", "--subset", "mine")
    assert "reviews:mine" in after
    gates = [line for line in after.splitlines() if line.strip().startswith("gate ")]
    assert gates and all("reviewed negatives of this partition" in g and "95% interval" in g for g in gates), after
    assert "no reference entry measured" not in after
