"""Result images: real files of the exact pixel size and format, that show their prompt.

An image depends only on the request body and the seed, so the same request gives the same bytes.
A request without a seed gets one derived from its body (a real API would pick a random one;
determinism is worth more in tests).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
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


def render(prompt: str, flux_params: dict[str, Any], index: int = 0) -> bytes:
    """The image file for a prompt and ``fluxParams`` (defaults are filled in here).

    ``index`` numbers the images of a job that returns several: each is a distinct image.
    """
    params = apply_defaults(flux_params)
    return _render(prompt, json.dumps(params, sort_keys=True), index)


@lru_cache(maxsize=16)
def _render(prompt: str, params_json: str, index: int = 0) -> bytes:
    params = json.loads(params_json)
    seed = effective_seed(prompt, params)
    width, height = output_size(params)
    # Index 0 keeps the palette a one-image job always had, so existing results do not change.
    palette_key = f"{seed}:{prompt}" if index == 0 else f"{seed}:{prompt}:{index}"
    palette = hashlib.sha256(palette_key.encode()).digest()
    image = _gradient(width, height, tuple(palette[0:3]), tuple(palette[3:6]))
    _write_prompt(image, prompt, params, seed, index)
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


def _write_prompt(image: Image.Image, prompt: str, params: dict[str, Any], seed: int, index: int) -> None:
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
    if index:
        caption += f" | image {index + 1}"
    draw.text((width // 20, height - int(size * 1.2)), caption, font=small, fill=(255, 255, 255))


# -- broken files, for the truncated_image and corrupt_image faults ---------------------------------


def truncated(data: bytes) -> bytes:
    """The first half of a file: what a storage bucket holds after an interrupted upload."""
    return data[: len(data) // 2]


def corrupt(data: bytes, fmt: str) -> bytes:
    """The file at its full length, headers intact (it opens with the right format and size), data garbled.

    Only the coded image data is inverted, so that ``Image.open`` still succeeds and only a full
    decode (``load()``) fails: the case a check of magic bytes, headers or length would let through.
    """
    garble = {"png": _corrupt_png, "jpg": _corrupt_jpeg, "webp": _corrupt_webp}[fmt]
    out = garble(data)
    assert len(out) == len(data)
    return out


def _invert(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def _corrupt_png(data: bytes) -> bytes:
    # Chunk lengths, types and CRCs stay; the IDAT payload (the zlib stream) is inverted.
    out, pos = bytearray(data[:8]), 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        out += (
            data[pos : pos + 8]
            + (_invert(body) if kind == b"IDAT" else body)
            + data[pos + 8 + length : pos + 12 + length]
        )
        pos += 12 + length
    return bytes(out + data[len(out) :])


def _corrupt_jpeg(data: bytes) -> bytes:
    # The frame header (SOF: the size) stays; Huffman tables and the entropy-coded scan are inverted,
    # which libjpeg refuses outright (a garbled scan alone it would decode into noise without error).
    out, pos = bytearray(data[:2]), 2
    while pos + 4 <= len(data):
        marker = data[pos : pos + 2]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos + 4 : pos + 2 + length]
        out += data[pos : pos + 4] + (_invert(segment) if marker == b"\xff\xc4" else segment)
        pos += 2 + length
        if marker == b"\xff\xda":  # start of scan: the coded data follows, up to the end marker
            out += _invert(data[pos:-2]) + data[-2:]
            break
    return bytes(out + data[len(out) :])


def _corrupt_webp(data: bytes) -> bytes:
    # RIFF header, the VP8 chunk header and the frame header (tag, start code, size) stay.
    start = data.find(b"VP8 ", 12, 64)
    keep = start + 8 + 10 if start >= 0 else 30
    return data[:keep] + _invert(data[keep:])
