"""Downloading result images: promptly (signed URLs expire), bounded, and checked before anyone trusts them."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import httpx2
from PIL import Image

from flexflow.errors import FlexflowError

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
DOWNLOAD_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
MAGIC = {"jpg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",), "webp": (b"RIFF",)}


class DownloadError(FlexflowError):
    """A result could not be downloaded, or is not the image that was asked for.

    ``permanent`` when asking again cannot help (the result is gone, or is not an image).
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class DownloadedImage:
    url: str
    data: bytes
    format: str
    width: int
    height: int
    sha256: str

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def download_image(
    url: str,
    *,
    expected_format: str,
    expected_size: tuple[int, int] | None = None,
    client: httpx2.Client | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> DownloadedImage:
    """Fetch one result URL, streamed with a size cap, and check its format and pixel size."""
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"result URL {url!r} is not http(s); refusing to fetch it")
    own = client is None
    http = client or httpx2.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True, max_redirects=MAX_REDIRECTS)
    try:
        data = _fetch(http, url, max_bytes)
    finally:
        if own:
            http.close()
    return check_image(url, data, expected_format, expected_size)


def _fetch(http: httpx2.Client, url: str, max_bytes: int) -> bytes:
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                gone = response.status_code in (403, 404, 410)
                hint = " (the result has expired or was purged)" if gone else ""
                raise DownloadError(f"downloading {url} answered {response.status_code}{hint}", permanent=gone)
            buffer = bytearray()
            for chunk in response.iter_bytes():
                buffer.extend(chunk)
                if len(buffer) > max_bytes:
                    raise DownloadError(f"{url} is larger than the {max_bytes:,}-byte limit; refusing it")
            return bytes(buffer)
    except httpx2.TooManyRedirects as exc:
        raise DownloadError(f"downloading {url} was redirected more than {http.max_redirects} times") from exc
    except httpx2.HTTPError as exc:
        raise DownloadError(f"downloading {url} failed: {type(exc).__name__}: {exc}") from exc


def check_image(url: str, data: bytes, expected_format: str, expected_size: tuple[int, int] | None) -> DownloadedImage:
    """The bytes must be the requested format (by magic bytes) and, when given, the expected pixel size."""
    if not data.startswith(MAGIC[expected_format]) or (expected_format == "webp" and data[8:12] != b"WEBP"):
        raise DownloadError(
            f"{url} is not a {expected_format} image (it starts with {data[:16]!r}); "
            "the result URL served something else, such as an error page",
            permanent=True,
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except OSError as exc:
        raise DownloadError(f"{url} is not a readable {expected_format} image: {exc}") from exc
    if expected_size is not None and (width, height) != expected_size:
        raise DownloadError(f"{url} is {width}x{height}; expected {expected_size[0]}x{expected_size[1]}")
    return DownloadedImage(url, data, expected_format, width, height, hashlib.sha256(data).hexdigest())
