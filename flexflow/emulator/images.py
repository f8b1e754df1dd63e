"""Result images: real files of the exact pixel size and format, that show their prompt.

An image depends only on the request body and the seed, so the same request gives the same bytes.
A request without a seed gets one derived from its body (a real API would pick a random one;
determinism is worth more in tests).
"""

from __future__ import annotations

import hashlib
import io
import json
import textwrap
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from flexflow.contract.params import apply_defaults
from flexflow.contract.sizes import output_size

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def effective_seed(prompt: str, flux_params: dict[str, Any]) -> int:
    if flux_params.get("seed") is not None:
        return int(flux_params["seed"])
    digest = hashlib.sha256(json.dumps([prompt, flux_params], sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def render(prompt: str, flux_params: dict[str, Any]) -> bytes:
    """The image file for a prompt and ``fluxParams`` (defaults are filled in here)."""
    params = apply_defaults(flux_params)
    return _render(prompt, json.dumps(params, sort_keys=True))


@lru_cache(maxsize=16)
def _render(prompt: str, params_json: str) -> bytes:
    params = json.loads(params_json)
    seed = effective_seed(prompt, params)
    width, height = output_size(params)
    palette = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    image = _gradient(width, height, tuple(palette[0:3]), tuple(palette[3:6]))
    _write_prompt(image, prompt, params, seed)
    out = io.BytesIO()
    fmt = params["output_format"]
    options: dict[str, Any] = {}
    if fmt in ("jpg", "webp"):
        options["quality"] = max(1, int(params["output_quality"]))
    image.save(out, PIL_FORMATS[fmt], **options)
    return out.getvalue()


def _gradient(width: int, height: int, top: tuple[int, ...], bottom: tuple[int, ...]) -> Image.Image:
    mask = Image.linear_gradient("L").resize((width, height))
    return Image.composite(Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), mask)


def _write_prompt(image: Image.Image, prompt: str, params: dict[str, Any], seed: int) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    size = max(12, min(width, height) // 16)
    font = ImageFont.load_default(size=size)
    small = ImageFont.load_default(size=max(10, size // 2))
    chars_per_line = max(8, int(width / (size * 0.55)))
    lines = textwrap.wrap(prompt, chars_per_line)[: max(1, int(height * 0.7 / (size * 1.25)))]
    y = height // 10
    for line in lines:
        draw.text((width // 20 + 2, y + 2), line, font=font, fill=(0, 0, 0))
        draw.text((width // 20, y), line, font=font, fill=(255, 255, 255))
        y += int(size * 1.25)
    caption = f"flux-2-flex emulator | seed {seed} | {params['resolution']} {params['aspect_ratio']} | {width}x{height}"
    draw.text((width // 20, height - int(size * 1.2)), caption, font=small, fill=(255, 255, 255))
