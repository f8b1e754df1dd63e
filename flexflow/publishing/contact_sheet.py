"""An HTML contact sheet of a run: thumbnails with prompt, params, seed and job id, for a person to look at."""

from __future__ import annotations

import html
import json
from typing import Any

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


def render_contact_sheet(manifest: dict[str, Any]) -> str:
    """``index.html`` for the files of a manifest; image links are relative to the manifest's folder."""
    figures = "\n".join(_figure(entry) for entry in manifest["files"])
    title = f"{manifest['dag_id']} - {manifest['run_id']}"
    return (
        "<!doctype html>\n<html lang=en><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>\n<body>\n"
        f"<h1>{html.escape(manifest['dag_id'])}</h1>\n"
        f"<p class=meta>run {html.escape(manifest['run_id'])} · published {html.escape(manifest['published_at'])}"
        f" · {len(manifest['files'])} image(s) · asset <code>{html.escape(str(manifest.get('asset')))}</code></p>\n"
        f"<div class=grid>\n{figures}\n</div>\n</body>\n</html>\n"
    )


def _figure(entry: dict[str, Any]) -> str:
    flux = entry["flux"]
    params = {key: flux[key] for key in sorted(flux)}
    rows = [
        ("image", f"{entry['image']}{entry['variant']}"),
        ("size", f"{entry['width']}x{entry['height']} {entry['format']}, {entry['bytes']:,} bytes"),
        ("seed", str(entry.get("seed"))),
        ("job", entry["job_id"]),
        ("params", json.dumps(params, separators=(", ", ": "))),
    ]
    details = "".join(f"<dt>{name}</dt><dd><code>{html.escape(value)}</code></dd>" for name, value in rows)
    name = html.escape(entry["name"], quote=True)
    return (
        f'<figure><a href="{name}"><img src="{name}" alt="{html.escape(entry["prompt"], quote=True)}"></a>'
        f"<figcaption><div class=prompt>{html.escape(entry['prompt'])}</div><dl>{details}</dl></figcaption></figure>"
    )
