"""The UI as a user drives it: the real Dagster webserver (`dagster dev`) and Debian's chromium (headless,
through Playwright). Open the asset graph, launch a materialization of a sample partition from the
Launchpad, wait for it, and find the audit table on the relabeled asset's page. Screenshots are kept in
test-artifacts/ui/."""

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
ARTIFACTS = PROJECT / "test-artifacts" / "ui"
BIN = Path(sys.executable).parent


@pytest.fixture
def webserver(tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (scripts/setup.sh --browser)")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    # the sample oracle judges the sample partitions from their planted labels, so relabeling happens
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        ARHN_ENGINE="scripted",
        ARHN_SCRIPT="sample_oracle",
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
    """The statuses of every run but the set-up's `arhn run` of sample_bio (any run of sample_geo counts, one
    requested by automation included)."""
    return [r["status"] for r in runs(port) if {"key": "dagster/partition", "value": "sample_bio"} not in r["tags"]]


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

            page.goto(f"{base}/locations/arhn_pipeline.definitions/jobs/clean_subset/playground")
            page.get_by_placeholder("Partition").fill("sample_geo")
            page.get_by_role("menuitem", name="sample_geo").first.click()
            page.get_by_role("button", name="Launch Run").click()
            page.wait_for_url("**/runs/**", timeout=30_000)
            page.screenshot(path=ARTIFACTS / "2-run-launched.png")

            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and run_statuses(port) != ["SUCCESS"]:
                assert "FAILURE" not in run_statuses(port)
                time.sleep(2)
            assert run_statuses(port) == ["SUCCESS"], runs(port)

            page.goto(f"{base}/assets/relabeled?view=partitions&partition=sample_geo")
            page.get_by_text("relabeled_examples").wait_for(timeout=30_000)
            page.locator("tr", has_text="qualification_gate").get_by_text("[Show Markdown]").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("labelled negatives of sample_bio").first.wait_for(timeout=30_000)
            gate = dialog.inner_text()
            page.screenshot(path=ARTIFACTS / "3-qualification-gate.png")
            page.keyboard.press("Escape")
            page.locator("tr", has_text="relabeled_examples").get_by_text("[Show Markdown]").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("R_ranked_above_positive").first.wait_for(timeout=30_000)
            audit = dialog.inner_text()
            page.screenshot(path=ARTIFACTS / "4-audit-table.png")
        finally:
            browser.close()
    assert "applied: kappa" in gate
    assert "full evidence" in audit and "arhn explain --subset sample_geo --query sample_geo-" in audit
    assert "to_positive" in audit
