"""The UI as a user drives it: the real Dagster webserver (`dagster dev`) and Debian's chromium (headless,
through Playwright). Open the asset graph, launch a materialization of a sample partition from the
Launchpad, wait for it, and find the audit table on the relabeled asset's page. Screenshots are kept in
test-artifacts/ui/."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arhn_pipeline_tests.conftest import PROJECT
from arhn_pipeline_tests.test_cli import dagster_dev, runs

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"


def require_chromium() -> None:
    """Skip without Debian's chromium; in CI (CI=true) its absence is a failure."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (scripts/setup.sh --browser)")


ARTIFACTS = PROJECT / "test-artifacts" / "ui"
BIN = Path(sys.executable).parent


@pytest.fixture
def webserver(tmp_path):
    require_chromium()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    # the sample oracle judges the sample partitions from their planted labels (as the LLM ranker and the
    # cascade's LLM judge: ARHN_LLM_JUDGE=1), so relabeling happens
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        ARHN_ENGINE="scripted",
        ARHN_SCRIPT="sample_oracle",
        ARHN_LLM_JUDGE="1",
        ARHN_DB=str(tmp_path / "ui.duckdb"),
    )
    subprocess.run([BIN / "arhn", "sources", "sync"], env=env, cwd=PROJECT, check=True, capture_output=True)
    # another sample partition's evidence first: its planted labels qualify the judges that clean sample_geo
    subprocess.run(
        [BIN / "arhn", "run", "--subset", "sample_bio", "--no-train"],
        env=env,
        cwd=PROJECT,
        check=True,
        capture_output=True,
    )
    with dagster_dev(env) as port:
        yield port


def run_statuses(port: int) -> list[str]:
    """The statuses of every run but the set-up's `arhn run --subset sample_bio --no-train` (its jobs:
    gather_evidence, decide, build_collection, compare_methods); a run requested by automation counts."""
    setup = ("gather_evidence", "decide", "build_collection", "compare_methods")
    return [r["status"] for r in runs(port) if r["jobName"] not in setup]


def choose_partition(page, url: str, partition: str) -> None:
    """Pick `partition` in the Launchpad's partition box. The box suggests partitions only once the job's
    partition set has loaded, which on a busy machine can come after the box shows: type again until the
    suggestion appears (up to two minutes), then click it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    deadline = time.monotonic() + 120
    while True:
        box = page.get_by_placeholder("Partition")
        box.click(timeout=30_000)
        box.fill("")
        box.press_sequentially(partition, delay=30)
        try:
            page.get_by_role("menuitem", name=partition).first.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            page.screenshot(path=ARTIFACTS / "2-partition-not-suggested.png")
            if time.monotonic() > deadline:
                raise
            page.keyboard.press("Escape")
            page.reload()
    page.screenshot(path=ARTIFACTS / "2-partition-chosen.png")
    page.get_by_role("menuitem", name=partition).first.click()


def launch(page) -> None:
    """Click Launch Run until the page moves to the new run (up to three tries): right after a partition is
    chosen the Launchpad reloads the partition's config, and on a busy machine a click can land meanwhile."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    button = page.get_by_role("button", name="Launch Run")
    for attempt in range(3):
        button.wait_for(timeout=30_000)
        page.wait_for_timeout(1_000)
        button.click()
        try:
            page.wait_for_url("**/runs/**", timeout=45_000)
            return
        except PlaywrightTimeout:
            page.screenshot(path=ARTIFACTS / f"3-launch-not-navigated-{attempt}.png")
            if "/runs/" in page.url or runs_launched(page):
                return
    raise AssertionError(f"Launch Run did not start a run; the page stayed at {page.url}")


def runs_launched(page) -> bool:
    """A run was launched even though the page did not move (it shows in the run list)."""
    port = int(page.url.split(":")[2].split("/")[0])
    return bool(run_statuses(port))


def test_launch_a_partition_from_the_ui_and_read_the_audit_table(webserver):
    from playwright.sync_api import sync_playwright

    port = webserver
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/asset-groups")
            page.get_by_role("button", name="Skip").click(timeout=30_000)  # the first-visit newsletter dialog
            # the lineage view shows the asset groups in graph order
            for group in ("ingest", "arhn", "rlhn", "relabel", "collection", "retriever"):
                page.get_by_text(group, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=ARTIFACTS / "1-asset-graph.png")

            choose_partition(
                page, f"{base}/locations/arhn_pipeline.definitions/jobs/clean_subset/playground", "sample_geo"
            )
            launch(page)
            page.screenshot(path=ARTIFACTS / "3-run-launched.png")

            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and run_statuses(port) != ["SUCCESS"]:
                assert "FAILURE" not in run_statuses(port)
                time.sleep(2)
            assert run_statuses(port) == ["SUCCESS"], json.dumps(runs(port))

            page.goto(f"{base}/assets/relabeled?view=partitions&partition=sample_geo")
            page.get_by_text("relabeled_examples").wait_for(timeout=30_000)
            # the small Markdown tables (the qualification gate) show on the page, the large ones (the rules, the
            # audit examples) behind their [Show Markdown] buttons
            page.get_by_text("labelled negatives of sample_bio").first.wait_for(timeout=30_000)
            gate = page.locator("body").inner_text()
            texts = []
            buttons = page.get_by_text("[Show Markdown]")
            for i in range(buttons.count()):
                buttons.nth(i).click()
                dialog = page.get_by_role("dialog")
                dialog.wait_for(timeout=30_000)
                texts.append(dialog.inner_text())
                page.screenshot(path=ARTIFACTS / f"4-markdown-{i}.png")
                page.keyboard.press("Escape")
                dialog.wait_for(state="hidden", timeout=30_000)
            audit = next(t for t in texts if "full evidence" in t)
        finally:
            browser.close()
    assert "labelled negatives of sample_bio" in gate and "qualification_gate" in gate and "applied" in gate
    assert "full evidence" in audit and "arhn explain --subset sample_geo --query sample_geo-" in audit
    assert "to_positive" in audit
