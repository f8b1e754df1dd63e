"""The gallery (issue 14) in a deployed Airflow, in a real browser: the DAG page's Gallery tab, served by the
api-server through the plugin, shows the latest published run's thumbnails and prompts; without a login the
api-server refuses it. Screenshots are saved as artifacts like test_ui.py's.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need flexflow's 'deploy' extra (playwright)")
from playwright.sync_api import Browser, Page, expect

from tests.deployment.harness.deployment import Deployment
from tests.deployment.helpers import check_published, finish, trigger, wait_until_parked
from tests.deployment.test_ui import VIEWPORT, browser, open_dag, page, screenshot  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.deployment, pytest.mark.parametrize("deployment", ["local"], indirect=True)]

DAG_ID = "deploy_smoke"
PROMPTS = ["Poster of a lighthouse at dusk", "Square tile with a wave pattern"]


def test_the_gallery_tab_shows_the_published_run(
    page: Page,  # noqa: F811
    deployment: Deployment,
    emulator: Any,
) -> None:
    emulator.configure(processing_seconds=2.0)
    run_id = trigger(deployment, DAG_ID)
    assert finish(deployment, DAG_ID, run_id) == "success"
    files = check_published(deployment, DAG_ID, run_id)["files"]
    assert len(files) == 3

    open_dag(page, deployment, DAG_ID)
    page.get_by_role("link", name="Gallery", exact=True).click()
    frame = page.frame_locator("iframe[title='Gallery']")
    gallery = frame.locator("section#published")
    expect(gallery.get_by_role("heading")).to_have_text(f"Latest published run: {run_id}")
    for prompt in PROMPTS:
        expect(gallery.locator(".prompt", has_text=prompt).first).to_be_visible()
    for entry in files:
        expect(gallery.get_by_text(entry["job_id"], exact=True)).to_be_visible()
    images = gallery.locator("img")
    expect(images).to_have_count(3)
    for index in range(3):
        images.nth(index).scroll_into_view_if_needed()
        # Loaded, not a broken icon: each thumbnail is a decoded image the api-server sent with the UI's login.
        expect(images.nth(index)).to_have_js_property("complete", True)
        assert images.nth(index).evaluate("img => img.naturalWidth") > 0
    assert sorted(images.evaluate_all("imgs => imgs.map(i => i.alt)")) == sorted(f["prompt"] for f in files)
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "gallery-tab")

    # The run's own page has the tab too, showing that run.
    page.goto(f"{deployment.api_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    page.get_by_role("link", name="Gallery", exact=True).click()
    run_gallery = page.frame_locator("iframe[title='Gallery']").locator("section#published")
    expect(run_gallery.get_by_role("heading")).to_have_text(f"Published run: {run_id}")
    expect(run_gallery.locator("img")).to_have_count(3)
    screenshot(page, "gallery-run-tab")


def test_the_gallery_refuses_a_browser_without_a_login(browser: Browser, deployment: Deployment) -> None:  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT)
    try:
        anonymous = context.new_page()
        gallery = f"{deployment.api_url}/flexflow/dags/{DAG_ID}/gallery"
        response = anonymous.goto(gallery)
        assert response is not None and response.status == 401, "no token, no gallery"
        query = urlencode({"run_id": "any", "name": "poster.png"})
        response = anonymous.goto(f"{deployment.api_url}/flexflow/dags/{DAG_ID}/thumbnail?{query}")
        assert response is not None and response.status == 401
        context.add_cookies([{"name": "_token", "value": "forged.jwt.token", "url": deployment.api_url}])
        response = anonymous.goto(gallery)
        assert response is not None and response.status == 403, "a forged token is refused"
        screenshot(anonymous, "gallery-refused")
    finally:
        context.close()


def test_a_run_awaiting_approval_shows_in_the_gallery_and_is_approved_in_its_required_actions_form(
    page: Page,  # noqa: F811
    deployment: Deployment,
    emulator: Any,
) -> None:
    """``publish.review: required``: while the run waits, its Gallery tab shows the staged images; the run's
    page leads to Airflow's Required Actions, whose form approves it; then the run publishes."""
    dag_id = "deploy_review"
    run_id = trigger(deployment, dag_id)
    wait_until_parked(deployment, dag_id, run_id, "review")
    run_page = f"{deployment.api_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
    page.goto(run_page)
    page.get_by_role("link", name="Gallery", exact=True).click()
    staged = page.frame_locator("iframe[title='Gallery']")
    expect(staged.locator("img").first).to_be_visible()
    expect(staged.get_by_text("A wide banner of a harbour at dawn").first).to_be_visible()
    expect(staged.get_by_text("2 image(s) · 2 job(s) · spend: credits 10")).to_be_visible()
    screenshot(page, "review-gallery-staged")

    page.goto(run_page)
    page.get_by_role("button", name=re.compile("Required Action")).first.click()  # the run header's button
    subject = page.get_by_text(f"Approve 2 image(s) of {dag_id} for publishing").first
    expect(subject).to_be_visible()
    screenshot(page, "review-required-actions")
    subject.click()
    approve = page.get_by_role("button", name="Approve", exact=True)
    expect(approve).to_be_visible()
    expect(page.get_by_role("button", name="Reject", exact=True)).to_be_visible()
    gallery = f"{deployment.api_url}/flexflow/dags/{dag_id}/gallery?run_id={quote(run_id, safe='')}"
    link = page.get_by_role("link", name="See them in the gallery")
    expect(link).to_have_attribute("href", gallery)  # the request links the staged run's gallery page
    shown = page.request.get(gallery)  # with the reviewer's login, as a click sends it
    assert shown.status == 200 and "A wide banner of a harbour at dawn" in shown.text(), shown.status
    screenshot(page, "review-approval-form")
    approve.click()
    assert finish(deployment, dag_id, run_id) == "success", deployment.api.task_states(dag_id, run_id)
    [answer] = [deployment.api.xcom(dag_id, run_id, "review")]
    assert answer["chosen_options"] == ["Approve"] and answer["responded_by_user"]["name"] == "admin"
    assert len(check_published(deployment, dag_id, run_id)["files"]) == 2
