"""The gallery page: a DAG's run awaiting approval and its latest published run, as thumbnails with what made them.

Every manifest value is hostile text (issue 11): escaped by ``publishing/contact_sheet.py: inert_text``,
hidden characters spelled out. The page has no script at all; its Content-Security-Policy allows only its
one style (by hash) and images from the api-server itself, and only Airflow's own UI may frame it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from flexflow.gallery.runs import RunManifest, Source
from flexflow.publishing.contact_sheet import inert_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;background:#fafafa;color:#222}
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:1.6rem}.meta{color:#555;margin:.3rem 0 1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:8px;padding:.7rem}
img{width:100%;height:200px;object-fit:contain;background:#eee;border-radius:4px}
.missing{height:200px;display:flex;align-items:center;justify-content:center;background:#fee;color:#900;
border-radius:4px;padding:.5rem;text-align:center;font-size:.85rem}
figcaption{font-size:.85rem;margin-top:.5rem}.prompt{font-weight:600}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .6rem;margin:.4rem 0 0}dt{color:#666}
code{font-size:.75rem;word-break:break-all}.problem{color:#900}.staging{border-left:4px solid #e80;padding-left:1rem}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
#: No script, no plugin, no form, no fetch; images from the api-server only; framed only by Airflow's UI.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; img-src 'self'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'"
)


@dataclass(frozen=True)
class Shown:
    """One run as the page shows it: its manifest, or why it cannot be shown; per file, why its image is not."""

    run: RunManifest
    manifest: dict[str, Any] | None = None
    problem: str | None = None
    not_shown: dict[str, str] = field(default_factory=dict)  # file name -> why its thumbnail is left out


def render_gallery(
    dag_id: str, staging: Shown | None, published: Shown | None, *, base: str, run_id: str | None = None
) -> str:
    """The page; ``base`` is the gallery app's path (``/flexflow``) that thumbnail URLs start with.

    With ``run_id`` (a DAG run's Gallery tab) the page is about that run only."""
    sections = []
    if staging is not None:
        sections.append(_section(dag_id, staging, base, f"Awaiting approval: run {inert_text(staging.run.run_id)}"))
    if published is not None:
        which = "Published run" if run_id is not None else "Latest published run"
        sections.append(_section(dag_id, published, base, f"{which}: {inert_text(published.run.run_id)}"))
    elif run_id is not None:
        sections.append(f"<p class=empty>Run {inert_text(run_id)} has published nothing (yet).</p>")
    else:
        sections.append(f"<p class=empty>No published run yet for {inert_text(dag_id)}.</p>")
    body = "\n".join(sections)
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\n"
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>Gallery - {inert_text(dag_id)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>Gallery of {inert_text(dag_id)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _section(dag_id: str, shown: Shown, base: str, heading: str) -> str:
    css = " class=staging" if shown.run.source is Source.STAGING else ""
    label = "staging" if shown.run.source is Source.STAGING else "published"
    top = f"<section id={label}{css}><h2>{heading}</h2>\n"
    if shown.manifest is None:
        return f"{top}<p class=problem>{inert_text(shown.problem or 'the manifest cannot be read')}</p></section>"
    manifest = shown.manifest
    files = [entry for entry in manifest.get("files") or [] if isinstance(entry, dict)]
    spend = manifest.get("spend") if isinstance(manifest.get("spend"), dict) else {}
    assert isinstance(spend, dict)
    totals = ", ".join(f"{inert_text(key)} {inert_text(value)}" for key, value in spend.items())
    when = "staged_at" if shown.run.source is Source.STAGING else "published_at"
    meta = (
        f"<p class=meta>{when.partition('_')[0]} {inert_text(manifest.get(when))} · {len(files)} image(s) · "
        f"{inert_text(manifest.get('jobs'))} job(s) · spend: {totals or 'not recorded'} · "
        f"manifest <code>{inert_text(shown.run.manifest_url)}</code></p>\n"
    )
    figures = "\n".join(_figure(dag_id, shown, entry, base) for entry in files)
    if shown.run.source is Source.STAGING:
        meta += "<p class=meta>Approve or reject it in the run's <code>review</code> task.</p>\n"
    return f"{top}{meta}<div class=grid>\n{figures}\n</div></section>"


def _figure(dag_id: str, shown: Shown, entry: dict[str, Any], base: str) -> str:
    name = entry.get("name")
    prompt = inert_text(entry.get("prompt"))
    why = shown.not_shown.get(name) if isinstance(name, str) else "the file has no name"
    if why is None and isinstance(name, str):
        query = urlencode({"run_id": shown.run.run_id, "name": name, "source": shown.run.source.value})
        src = f"{base}/dags/{quote(dag_id, safe='')}/thumbnail?{query}"
        picture = f'<img src="{inert_text(src)}" alt="{prompt}" loading=lazy>'
    else:
        picture = f"<div class=missing>{inert_text(why)}</div>"
    flux = entry.get("flux")
    params = {str(key): flux[key] for key in sorted(flux, key=str)} if isinstance(flux, dict) else flux
    rows = [
        ("file", name),
        ("image", f"{entry.get('image')}{entry.get('variant') or ''}"),
        ("size", f"{entry.get('width')}x{entry.get('height')} {entry.get('format')}"),
        ("seed", entry.get("seed")),
        ("job", entry.get("job_id")),
        ("credits", entry.get("credit_cost")),
        ("params", json.dumps(params, separators=(", ", ": "), default=str)),
    ]
    if entry.get("reused_from"):
        rows.append(("reused from", entry.get("reused_from")))
    details = "".join(f"<dt>{label}</dt><dd><code>{inert_text(value)}</code></dd>" for label, value in rows)
    return f"<figure>{picture}<figcaption><div class=prompt>{prompt}</div><dl>{details}</dl></figcaption></figure>"
