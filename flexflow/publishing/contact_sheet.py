"""An HTML contact sheet of a run: thumbnails with prompt, params, seed and job id, for a person to look at.

Every value in a manifest comes from a spec or from the API, so the sheet treats all of it as hostile
text (issue 11): each value is escaped, invisible and direction-changing characters are shown as
``[U+XXXX]``, links and image sources are only file names inside the run's folder or http(s) URLs, and a
Content-Security-Policy forbids scripts, plugins, frames, forms and every load but the sheet's images.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

from flexflow.text import visible

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}
h1{font-size:1.4rem}.meta{color:#666;margin-bottom:1.5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:1.2rem}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:8px;padding:.8rem}
img{width:100%;height:220px;object-fit:contain;background:#eee;border-radius:4px}
figcaption{font-size:.85rem;margin-top:.5rem}.prompt{font-weight:600}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .6rem;margin:.4rem 0 0}dt{color:#666}
code{font-size:.75rem;word-break:break-all}
"""
# The one inline style is allowed by its hash, so an injected <style> (were escaping ever to fail) is not.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# An http(s) origin goes into the policy as a source expression: only a plain host[:port] may, so a URL
# cannot smuggle `;` or a space into it and add directives of its own.
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(?::\d{1,5})?", re.IGNORECASE)


def render_contact_sheet(manifest: dict[str, Any]) -> str:
    """``index.html`` for the files of a manifest; image links are relative to the manifest's folder."""
    files = list(manifest.get("files") or [])
    links = [file_link(entry.get("name")) for entry in files]
    figures = "\n".join(_figure(entry, link) for entry, link in zip(files, links, strict=True))
    dag_id, run_id = inert_text(manifest.get("dag_id")), inert_text(manifest.get("run_id"))
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(content_policy(links))}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{dag_id} - {run_id}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{dag_id}</h1>\n"
        f"<p class=meta>run {run_id} · published {inert_text(manifest.get('published_at'))}"
        f" · {len(files)} image(s) · asset <code>{inert_text(manifest.get('asset'))}</code></p>\n"
        f"<div class=grid>\n{figures}\n</div>\n</body>\n</html>\n"
    )


def content_policy(links: list[str | None]) -> str:
    """The sheet's Content-Security-Policy: nothing but its style and its images (the run's, and http(s) ones).

    ``default-src 'none'`` forbids scripts (inline handlers included), objects, frames, fonts, fetches;
    ``file:`` is listed because a sheet opened from disk has an opaque origin that ``'self'`` does not match.
    """
    origins = sorted({origin.group(0) for link in links if link and (origin := _ORIGIN.match(link))})
    images = " ".join(["'self'", "file:", *origins])
    return (
        f"default-src 'none'; img-src {images}; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none'"
    )


def file_link(name: object) -> str | None:
    """The href/src for a file of the run: a plain file name in the sheet's folder, or an http(s) URL; else none.

    A file name is percent-encoded whole, so ``javascript:x`` becomes the relative ``javascript%3Ax``,
    never a scheme; names that are not one plain segment (``..``, separators, hidden characters) get no link.
    """
    if not isinstance(name, str) or name in {"", ".", ".."} or visible(name) != name:
        return None
    try:
        url = urlsplit(name)
    except ValueError:  # a malformed authority such as "http://[::1"
        return None
    if url.scheme in {"http", "https"}:
        return url.geturl() if _ORIGIN.fullmatch(f"{url.scheme}://{url.netloc}") else None
    if "/" in name or "\\" in name:
        return None
    return quote(name, safe="")


def inert_text(value: object) -> str:
    """Any manifest value as inert HTML text."""
    return html.escape(visible(value if isinstance(value, str) else str(value)), quote=True)


def _figure(entry: dict[str, Any], link: str | None) -> str:
    flux = entry.get("flux")
    params = {str(key): flux[key] for key in sorted(flux, key=str)} if isinstance(flux, dict) else flux
    size = entry.get("bytes")
    rows = [
        ("image", f"{entry.get('image')}{entry.get('variant') or ''}"),
        ("size", f"{entry.get('width')}x{entry.get('height')} {entry.get('format')}, {_count(size)} bytes"),
        ("seed", entry.get("seed")),
        ("job", entry.get("job_id")),
        ("params", json.dumps(params, separators=(", ", ": "), default=str)),
    ]
    details = "".join(f"<dt>{name}</dt><dd><code>{inert_text(value)}</code></dd>" for name, value in rows)
    prompt = inert_text(entry.get("prompt"))
    name = inert_text(entry.get("name"))
    picture = f'<img src="{html.escape(link)}" alt="{prompt}">' if link else f"<code>{name}</code>"
    if link:
        picture = f'<a href="{html.escape(link)}" rel="noopener noreferrer">{picture}</a>'
    return f"<figure>{picture}<figcaption><div class=prompt>{prompt}</div><dl>{details}</dl></figcaption></figure>"


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)
