"""The gallery plugin (issue 14) in Airflow's own api-server app: real runs, real files, Airflow's auth manager.

Two dag.test() runs of an example spec against the emulator leave real XComs and manifests in the session's
SQLite metadata database; the app under test is Airflow's ``create_app()``, which mounts the plugin found
through its ``airflow.plugins`` entry point, so the routes run behind Airflow's own JWT handling.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from PIL import Image

from flexflow.gallery.page import Shown, render_gallery
from flexflow.gallery.runs import (
    MAX_IMAGE_PIXELS,
    THUMBNAIL_BOX,
    GalleryError,
    RunManifest,
    Source,
    latest_published,
    latest_staging,
    plain_name,
    thumbnail,
    verified_file,
)
from flexflow.spec import load_spec
from tests.airflow_helpers import clear_publish_root, load_module, xcom
from tests.conftest import AIRFLOW_HOME, ROOT, SECRET_KEY
from tests.test_escaping import HOSTILE, hostile_manifest, parsed

SPEC = ROOT / "specs" / "spring_social_refresh.yaml"
DAG_ID = "spring_social_refresh"


@dataclass(frozen=True)
class Runs:
    """A published run and a run awaiting approval, each with its folder (a copy this module owns)."""

    db: Path
    published: str
    published_folder: Path
    staging: str
    staging_folder: Path


def set_xcom(db: Path, run_id: str, task_id: str, key: str, value: Any) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE xcom SET value = ? WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?",
            (json.dumps(value), DAG_ID, run_id, task_id, key),
        )


def add_review(db: Path, run_id: str, state: str, staging: dict[str, Any]) -> None:
    """What the approval task leaves while it waits: a ``review`` task instance in ``state`` and its XCom."""
    with sqlite3.connect(db) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(task_instance)")]
        chosen = [
            {"id": "?", "task_id": "'review'", "state": "?"}.get(column, column) for column in columns
        ]  # a copy of the run's finalize, renamed and parked
        connection.execute(
            f"INSERT INTO task_instance ({', '.join(columns)}) SELECT {', '.join(chosen)} FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? AND task_id = 'finalize'",
            (str(uuid.uuid4()), state, DAG_ID, run_id),
        )
        connection.execute(
            "INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id, value, timestamp) "
            "SELECT dag_run_id, 'review', -1, 'staging', dag_id, run_id, ?, timestamp FROM xcom "
            "WHERE dag_id = ? AND run_id = ? AND task_id = 'finalize' AND key = 'return_value'",
            (json.dumps(staging), DAG_ID, run_id),
        )


def pointing_at(folder: Path) -> dict[str, Any]:
    return {
        "manifest": f"file://{folder}/manifest.json",
        "contact_sheet": f"file://{folder}/index.html",
        "conn_id": None,
    }


@pytest.fixture(scope="module")
def runs(emulator_server: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Two real runs: the first stays published; the second is turned into a run awaiting approval."""
    from airflow.utils.session import create_session

    emulator_server.wait_idle()
    emulator_server.state.reset()
    emulator_server.faults.reset(seed=0)
    emulator_server.config.update({"api_keys": [SECRET_KEY], "queue_seconds": 0.0, "processing_seconds": 0.0})
    connection = {"conn_type": "apiframe", "host": emulator_server.url, "password": SECRET_KEY}
    root = tmp_path_factory.mktemp("gallery")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_APIFRAME_DEFAULT", json.dumps(connection))
        spec = load_spec(SPEC)
        dag = vars(load_module(ROOT / "dags/flexflow_dags.py"))[DAG_ID]
        folders = []
        run_ids = []
        for name in ("published", "staging"):
            clear_publish_root(spec)
            dag_run = dag.test()
            assert dag_run.state == "success"
            [finalized] = xcom(airflow_db, DAG_ID, dag_run.run_id, "finalize")
            with create_session() as session:  # the XCom as Airflow stored it is what the gallery finds
                assert latest_published(session, DAG_ID) == RunManifest(
                    dag_run.run_id, Source.PUBLISHED, finalized["manifest"], None
                )
            # Each run's files, copied where no later run of this spec (same day, same folder) overwrites them.
            folder = root / name
            shutil.copytree(Path(urlsplit(finalized["manifest"]).path).parent, folder)
            set_xcom(airflow_db, dag_run.run_id, "finalize", "return_value", {**finalized, **pointing_at(folder)})
            folders.append(folder)
            run_ids.append(dag_run.run_id)
    staging_run = run_ids[1]
    # The second run is staged, not published: its finalize named no manifest, its review waits for input.
    set_xcom(airflow_db, staging_run, "finalize", "return_value", {"manifest": None, "files": 4, "jobs": 4})
    add_review(airflow_db, staging_run, "awaiting_input", pointing_at(folders[1]))
    with create_session() as session:
        assert latest_staging(session, DAG_ID) == RunManifest(
            staging_run, Source.STAGING, f"file://{folders[1]}/manifest.json", None
        )
        assert latest_published(session, DAG_ID) == RunManifest(
            run_ids[0], Source.PUBLISHED, f"file://{folders[0]}/manifest.json", None
        )
    return Runs(airflow_db, run_ids[0], folders[0], staging_run, folders[1])


@pytest.fixture(scope="module")
def app(runs: Runs) -> Any:
    """Airflow's api-server app (core routes, plugins, auth manager) over the module's database."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "gallery-test-jwt-secret-" + "0123456789abcdef" * 4)
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "viewer:viewer")
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(AIRFLOW_HOME / "gallery-passwords.json"))
        from airflow.api_fastapi.app import create_app, purge_cached_app

        purge_cached_app()
        yield create_app(apps="core")
        purge_cached_app()


@pytest.fixture(scope="module")
def token(app: Any) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))


@pytest.fixture
def client(app: Any, token: str) -> Iterator[Any]:
    """A browser's view: the UI's ``_token`` cookie, as the iframe of the Gallery tab sends it."""
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://testserver", cookies={"_token": token}) as test_client:
        yield test_client


def gallery_url(dag_id: str = DAG_ID, **query: str) -> str:
    return f"/flexflow/dags/{dag_id}/gallery" + (f"?{urlencode(query)}" if query else "")


def thumbnails(page: str) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(attrs["src"] or "").query) for tag, attrs in parsed(page).tags if tag == "img"]


def test_the_gallery_shows_the_published_run_and_the_run_awaiting_approval(client: Any, runs: Runs) -> None:
    response = client.get(gallery_url())
    assert response.status_code == 200, response.text
    page = response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'self'" in policy and "script" not in policy
    assert f"Awaiting approval: run {runs.staging}" in page
    assert "Approve or reject it in the run's <code>review</code> task." in page
    assert f"Latest published run: {runs.published}" in page
    assert page.index("Awaiting approval") < page.index("Latest published run")
    manifest = json.loads((runs.published_folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        assert entry["prompt"] in page and entry["job_id"] in page and entry["name"] in page
    assert "Hero banner for Spring 2027, bold type, spring palette" in page
    assert "credits" in page and "spend: submitted" in page
    shown = thumbnails(page)
    assert len(shown) == 8, "four images of each run"
    assert {(s["source"][0], s["run_id"][0]) for s in shown} == {
        ("staging", runs.staging),
        ("published", runs.published),
    }
    assert "<script" not in page


def test_a_thumbnail_is_a_small_jpeg_of_a_listed_file(client: Any, runs: Runs) -> None:
    response = client.get(gallery_url())
    for query in thumbnails(response.text):
        got = client.get(f"/flexflow/dags/{DAG_ID}/thumbnail", params={k: v[0] for k, v in query.items()})
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(got.content)) as picture:
            assert picture.format == "JPEG"
            assert max(picture.size) <= max(THUMBNAIL_BOX) and min(picture.size) > 0


def test_a_run_id_shows_that_run(client: Any, runs: Runs) -> None:
    page = client.get(gallery_url(run_id=runs.published)).text
    assert f"Published run: {runs.published}" in page and "Latest" not in page and "Awaiting approval" not in page
    page = client.get(gallery_url(run_id=runs.staging)).text
    assert f"Awaiting approval: run {runs.staging}" in page
    assert f"Run {runs.staging} has published nothing (yet)." in page
    assert thumbnails(page) and {q["run_id"][0] for q in thumbnails(page)} == {runs.staging}


def test_a_review_no_longer_waiting_is_not_shown_as_awaiting_approval(client: Any, runs: Runs) -> None:
    with sqlite3.connect(runs.db) as connection:
        connection.execute(
            "UPDATE task_instance SET state = 'success' WHERE run_id = ? AND task_id = 'review'", (runs.staging,)
        )
    try:
        page = client.get(gallery_url()).text
        assert "Awaiting approval" not in page and f"Latest published run: {runs.published}" in page
    finally:
        with sqlite3.connect(runs.db) as connection:
            connection.execute(
                "UPDATE task_instance SET state = 'awaiting_input' WHERE run_id = ? AND task_id = 'review'",
                (runs.staging,),
            )


def test_only_files_the_manifest_lists_are_served(client: Any, runs: Runs) -> None:
    url = f"/flexflow/dags/{DAG_ID}/thumbnail"
    secret = runs.published_folder.parent / "secret.png"
    shutil.copy(runs.published_folder / "hero_banner.png", secret)
    for name in ("../secret.png", "manifest.json", "/etc/passwd", "hero_banner.png/..", "..", ""):
        got = client.get(url, params={"run_id": runs.published, "name": name})
        assert got.status_code == 404, (name, got.status_code)
    # A run the XComs do not name, and a listed file under the wrong source, are not served either.
    assert client.get(url, params={"run_id": "manual__nope", "name": "hero_banner.png"}).status_code == 404
    got = client.get(url, params={"run_id": runs.published, "name": "hero_banner.png", "source": "staging"})
    assert got.status_code == 404


def test_hostile_manifest_values_stay_inert_and_changed_files_are_not_shown(client: Any, runs: Runs) -> None:
    manifest_file = runs.published_folder / "manifest.json"
    original = manifest_file.read_text()
    image = runs.published_folder / "story_seed-1.png"
    original_image = image.read_bytes()
    manifest = json.loads(original)
    hostile = manifest["files"][0]
    hostile["prompt"] = "<script>alert('prompt')</script>"
    hostile["job_id"] = '"><img src=x onerror=alert(1)>'
    manifest["files"].append({**manifest["files"][1], "name": "../secret.png", "prompt": "escaping name"})
    try:
        manifest_file.write_text(json.dumps(manifest))
        image.write_bytes(original_image + b"changed")  # a file changed after publishing
        page = client.get(gallery_url(run_id=runs.published)).text
        elements = parsed(page)
        assert "script" not in [tag for tag, _ in elements.tags]
        assert not [a for _, attrs in elements.tags for a in attrs if a.lower().startswith("on")]
        text = "".join(elements.text)
        assert "<script>alert('prompt')</script>" in text, "shown as text"
        assert "story_seed-1.png changed since it was published" in text
        assert "not a plain file name in the run's folder: not shown" in text
        names = [q["name"][0] for q in thumbnails(page)]
        assert "story_seed-1.png" not in names and "../secret.png" not in names
        assert len(names) == 3
        got = client.get(
            f"/flexflow/dags/{DAG_ID}/thumbnail", params={"run_id": runs.published, "name": "story_seed-1.png"}
        )
        assert got.status_code == 409 and "changed since it was published" in got.text
    finally:
        manifest_file.write_text(original)
        image.write_bytes(original_image)


def test_an_unreadable_manifest_is_named_not_a_500(client: Any, runs: Runs) -> None:
    manifest_file = runs.published_folder / "manifest.json"
    original = manifest_file.read_text()
    try:
        manifest_file.unlink()
        response = client.get(gallery_url(run_id=runs.published))
        assert response.status_code == 200
        assert f"the manifest file://{manifest_file} of run {runs.published} cannot be read" in response.text
        manifest_file.write_text("{not json")
        assert f"the manifest of run {runs.published} is not JSON" in client.get(gallery_url()).text
    finally:
        manifest_file.write_text(original)


def test_a_dag_with_no_published_run(client: Any, runs: Runs) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        if session.get(DagModel, "gallery_empty") is None:
            session.add(DagModel(dag_id="gallery_empty", bundle_name="dags-folder", fileloc="/nowhere.py"))
    try:
        response = client.get(gallery_url("gallery_empty"))
        assert response.status_code == 200
        assert "No published run yet for gallery_empty." in response.text
        assert client.get(gallery_url("no_such_dag")).status_code == 404
    finally:
        with create_session() as session:
            session.execute(delete(DagModel).where(DagModel.dag_id == "gallery_empty"))


def test_anonymous_and_forged_requests_are_refused(app: Any, runs: Runs) -> None:
    from fastapi.testclient import TestClient

    query = urlencode({"run_id": runs.published, "name": "hero_banner.png"})
    urls = [gallery_url(), f"/flexflow/dags/{DAG_ID}/thumbnail?{query}"]
    with TestClient(app) as anonymous:
        for url in urls:
            assert anonymous.get(url).status_code == 401
    with TestClient(app, cookies={"_token": "forged.jwt.token"}) as forged:
        for url in urls:
            assert forged.get(url).status_code == 403


def test_a_user_without_access_to_the_dag_is_refused(client: Any, runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's auth manager decides, per DAG and for its XComs: one that says no makes the gallery say no."""
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    asked: list[tuple[str, Any, Any]] = []

    def is_authorized_dag(*, method: str, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        asked.append((method, access_entity, details.id if details else None))
        return details is None or details.id != DAG_ID

    monkeypatch.setattr(manager, "is_authorized_dag", is_authorized_dag)
    assert client.get(gallery_url()).status_code == 403
    got = client.get(f"/flexflow/dags/{DAG_ID}/thumbnail", params={"run_id": runs.published, "name": "x.png"})
    assert got.status_code == 403
    assert {(method, str(entity), dag) for method, entity, dag in asked} == {("GET", "DagAccessEntity.XCOM", DAG_ID)}


def test_the_plugin_adds_a_gallery_tab_to_dags_and_runs(client: Any) -> None:
    plugins = client.get("/api/v2/plugins").json()["plugins"]
    [plugin] = [p for p in plugins if p["name"] == "flexflow_gallery"]
    assert [(v["destination"], v["href"]) for v in plugin["external_views"]] == [
        ("dag", "/flexflow/dags/{DAG_ID}/gallery"),
        ("dag_run", "/flexflow/dags/{DAG_ID}/gallery?run_id={RUN_ID}"),
    ]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/flexflow"


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_every_hostile_value_renders_inert(text: str) -> None:
    run = RunManifest(text, Source.STAGING, text, None)
    page = render_gallery(text, Shown(run, hostile_manifest(text)), Shown(run, problem=text), base="/flexflow")
    elements = parsed(page)
    names = [tag for tag, _ in elements.tags]
    assert not {"script", "iframe", "object", "embed", "base", "form", "svg", "link", "a"} & set(names)
    for tag, attrs in elements.tags:
        assert not [name for name in attrs if name.lower().startswith("on")], (tag, attrs)
        if tag == "img":
            src = urlsplit(attrs["src"] or "")
            assert not src.scheme and not src.netloc and src.path.startswith("/flexflow/dags/"), attrs
    assert names.count("style") == 1 and names.count("meta") == 2


def test_a_thumbnail_refuses_what_is_not_a_bounded_image() -> None:
    with pytest.raises(GalleryError, match="not a readable image"):
        thumbnail(b"<svg onload=alert(1)>")
    # A header claiming more pixels than allowed is refused before any pixel is decoded.
    big = io.BytesIO()
    Image.new("1", (MAX_IMAGE_PIXELS // 1000 + 1, 1000)).save(big, "PNG")
    with pytest.raises(GalleryError, match="more than"):
        thumbnail(big.getvalue())
    small = io.BytesIO()
    Image.new("RGB", (1600, 900), "red").save(small, "PNG")
    with Image.open(io.BytesIO(thumbnail(small.getvalue()))) as picture:
        assert picture.size == (320, 180)


@pytest.mark.parametrize(
    "name",
    [
        "../x.png",
        "a/b.png",
        "a\\b.png",
        "..",
        ".",
        "",
        "a%2Fb.png",
        "%2e%2e",
        "manifest.json",
        "index.html",
        "x\u202epng.exe",
        "x\x00.png",
        "x\n.png",
        None,
        7,
    ],
)
def test_a_name_that_is_not_one_plain_file_name_is_never_read(name: Any) -> None:
    assert plain_name(name) is None
    run = RunManifest("manual__1", Source.PUBLISHED, "file:///nonexistent/manifest.json", None)
    with pytest.raises(GalleryError, match="not a plain file name"):
        verified_file(run, {"name": name, "sha256": "0" * 64})


def test_a_file_the_manifest_gives_no_sha256_is_not_shown(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"picture")
    run = RunManifest("manual__1", Source.PUBLISHED, f"file://{tmp_path}/manifest.json", None)
    assert plain_name("a.png") == "a.png"
    with pytest.raises(GalleryError, match="records no sha256"):
        verified_file(run, {"name": "a.png"})
    digest = hashlib.sha256(b"picture").hexdigest()
    assert verified_file(run, {"name": "a.png", "sha256": digest}) == b"picture"
    with pytest.raises(GalleryError, match="changed since it was published"):
        verified_file(run, {"name": "a.png", "sha256": "0" * 64})


def test_the_tabs_point_under_the_api_servers_own_path() -> None:
    from flexflow.gallery.links import gallery_href

    assert gallery_href("/") == "/flexflow/dags/{DAG_ID}/gallery"
    assert gallery_href("/airflow/") == "/airflow/flexflow/dags/{DAG_ID}/gallery"
    assert gallery_href("/airflow/", run=True) == "/airflow/flexflow/dags/{DAG_ID}/gallery?run_id={RUN_ID}"


def test_a_second_look_reads_no_file_and_a_rewritten_file_is_checked_again(
    client: Any, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flexflow.gallery.runs as gallery_runs

    client.get(gallery_url())  # verified and cached
    read: list[str] = []
    real = gallery_runs.read_bounded

    def counting(path: Any, limit: int) -> bytes:
        read.append(str(path))
        return real(path, limit)

    monkeypatch.setattr(gallery_runs, "read_bounded", counting)
    page = client.get(gallery_url()).text
    for query in thumbnails(page):
        assert client.get(f"/flexflow/dags/{DAG_ID}/thumbnail", params={k: v[0] for k, v in query.items()}).is_success
    assert [path for path in read if not path.endswith("manifest.json")] == [], "files came from the cache"

    image = runs.published_folder / "hero_banner.png"
    original = image.read_bytes()
    try:
        image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, new mtime, other bytes
        page = client.get(gallery_url()).text
        assert "hero_banner.png changed since it was published" in "".join(parsed(page).text)
        assert any(path.endswith("/hero_banner.png") for path in read), "read again: it was rewritten"
    finally:
        image.write_bytes(original)
