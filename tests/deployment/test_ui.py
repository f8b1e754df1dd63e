"""The Airflow UI of a deployment, in a real browser: headless Debian Chromium driven by Playwright.

No browser is downloaded: Playwright drives ``/usr/bin/chromium`` (``python3 dev.py test`` installs
Debian's package when it is missing). Each test saves screenshots as artifacts under
``$FLEXFLOW_ARTIFACTS_DIR/screenshots`` (default ``out/deployment/screenshots``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

pytest.importorskip("playwright.sync_api", reason="the browser tests need flexflow's 'deploy' extra (playwright)")
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.deployment.harness.deployment import Deployment
from tests.deployment.helpers import BROKEN_PROBLEM, ROOT, finish, spec_file, trigger

pytestmark = [pytest.mark.deployment, pytest.mark.parametrize("deployment", ["local"], indirect=True)]

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root, and quiet on a machine with no network: no background, update or sync traffic.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
UI_TIMEOUT_MS = 60_000  # a page's first render on a busy 2-core machine
SCREENSHOTS = Path(os.environ.get("FLEXFLOW_ARTIFACTS_DIR") or ROOT / "out" / "deployment") / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: `python3 dev.py test` installs Debian's chromium (as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, deployment: Deployment) -> Iterator[Page]:
    """A fresh browser context, logged in through the UI's sign-in form as the deployment's admin."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(deployment.api_url + "/")
        expect(page).to_have_url(f"{deployment.api_url}/auth/login?next=%2F")  # not logged in yet
        page.get_by_label("Username").fill(deployment.api.username)
        page.get_by_label("Password").fill(deployment.api.password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("link", name="Dags", exact=True)).to_be_visible()
        assert "/auth/login" not in page.url
        yield page
    finally:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    """Save the page as an artifact; the file is a real PNG of the viewport's size."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")  # a dialog fully open, not mid-fade
    with Image.open(path) as picture:
        assert (picture.format, picture.size) == ("PNG", (VIEWPORT["width"], VIEWPORT["height"]))
    return path


def open_dag(page: Page, deployment: Deployment, dag_id: str) -> None:
    page.goto(f"{deployment.api_url}/dags/{dag_id}")
    expect(page.get_by_role("heading", name=dag_id)).to_be_visible()


def dag_docs(page: Page) -> str:
    """The text of the DAG's "Dag Docs" dialog (its doc_md, rendered)."""
    page.get_by_role("button", name="Dag Docs").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Dag Documentation").wait_for()
    return dialog.inner_text()


def graph_nodes(page: Page) -> list[str]:
    nodes = page.locator(".react-flow__node")
    nodes.first.wait_for()
    return [text.split("\n")[0] for text in nodes.all_inner_texts()]


def test_the_graph_shows_each_image_as_a_task_group(page: Page, deployment: Deployment) -> None:
    open_dag(page, deployment, "deploy_smoke")
    page.get_by_role("button", name="Show Graph (Press g)").click()
    expect(page.locator(".react-flow__node", has_text="Task Group")).to_have_count(2)
    # A mapped task group (the tile's variants, one chain each) is labelled with its mapping, "[ ]".
    assert sorted(graph_nodes(page)) == ["finalize", "poster", "prepare", "tile [ ]"]
    screenshot(page, "graph-collapsed")

    page.get_by_role("button", name="Expand all task groups").click()
    expect(page.locator(".react-flow__node", has_text="FluxJobSensor")).to_have_count(2)
    nodes = graph_nodes(page)
    for kind, operator in (("submit", "FluxFlexOperator"), ("wait", "FluxJobSensor"), ("publish", "PublishImage")):
        shown = page.locator(".react-flow__node", has_text=operator)
        expect(shown).to_have_count(2)  # one per image; the tile's are mapped over its variants
        assert sum(node.startswith(kind) for node in nodes) == 2, nodes
    screenshot(page, "graph-expanded")


def test_the_dag_docs_show_the_spec(page: Page, deployment: Deployment) -> None:
    open_dag(page, deployment, "deploy_smoke")
    docs = dag_docs(page)
    source = spec_file(deployment, "deploy_smoke").read_text().strip()
    assert source in docs, "the spec's YAML, verbatim, in the DAG docs"
    assert "3 job(s) per run" in docs
    screenshot(page, "dag-docs")


def test_the_submit_task_links_to_its_apiframe_job(page: Page, deployment: Deployment, emulator: Any) -> None:
    emulator.configure(processing_seconds=2.0)
    run_id = trigger(deployment, "deploy_single")
    assert finish(deployment, "deploy_single", run_id) == "success"
    job_id = deployment.api.xcom("deploy_single", run_id, "hero.submit")

    page.goto(f"{deployment.api_url}/dags/deploy_single/runs/{quote(run_id, safe='')}/tasks/hero.submit/details")
    expect(page.get_by_text("Extra Links")).to_be_visible()
    link = page.get_by_role("link", name="Apiframe job")
    expect(link).to_be_visible()
    assert link.get_attribute("href") == f"{emulator.url}/_emulator/jobs/{job_id}"
    screenshot(page, "submit-task-job-link")

    # The link leads to the job (the emulator's job page stands in for the Apiframe dashboard).
    response = page.context.new_page().goto(str(link.get_attribute("href")))
    assert response is not None and response.ok
    job = response.json()
    assert (job["id"], job["status"]) == (job_id, "COMPLETED")


def test_a_broken_spec_is_visible_as_such(page: Page, deployment: Deployment) -> None:
    page.goto(f"{deployment.api_url}/dags?tags=invalid")
    expect(page.get_by_role("link", name="deploy_broken")).to_be_visible()
    expect(page.get_by_text("1 Dag", exact=True)).to_be_visible()  # only the broken spec is tagged invalid
    screenshot(page, "dags-tagged-invalid")

    open_dag(page, deployment, "deploy_broken")
    expect(page.get_by_role("link", name="invalid", exact=True)).to_be_visible()
    docs = dag_docs(page)
    assert "Invalid flexflow spec" in docs
    assert f"{spec_file(deployment, 'deploy_broken')}:" in docs and BROKEN_PROBLEM in docs, docs
    screenshot(page, "broken-spec-docs")
