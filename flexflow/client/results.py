"""Result files: downloaded promptly (signed URLs expire), bounded, retried, checked whole before anyone trusts them.

A result is billed once and cannot be asked for again, so a download tells apart two kinds of failure:

- *transient*: the way to the file failed (a dropped connection, a cut transfer, a timeout, 408, 429,
  5xx). Asked again with backoff inside the same call (:class:`~flexflow.client.retry.RetryPolicy`).
- *permanent*: the file is gone (403, 404, 410: expired or purged) or is not the image asked for (not
  an image, the wrong format or pixel size, or data that does not decode although it arrived whole).
  Asking again cannot help; only a new job can (:attr:`DownloadError.permanent`).

"Arrived whole" means the byte count matched the ``Content-Length`` the server announced, or the same
bytes came twice: a file cut on the way is transient, a file broken at its source is permanent.
Nothing is returned before the image is fully decoded, so nothing partial is ever published.
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
from PIL import Image

from flexflow.client._version import USER_AGENT, USER_AGENT_HEADER
from flexflow.client.errors import ApiError, RateLimited
from flexflow.client.retry import RetryPolicy, parse_retry_after

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
DOWNLOAD_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
#: Within one call: a few quick tries ride out a blip; a longer outage is the task's retries' business.
DOWNLOAD_RETRY = RetryPolicy(max_attempts=5, max_elapsed=60.0)
MAGIC = {"jpg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",), "webp": (b"RIFF",)}
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: Statuses that say the file is gone for good: a signed URL that expired, a purged result.
GONE_STATUSES = frozenset({403, 404, 410})
#: Statuses that say "not now": asked again after a wait. 501 (not implemented) will not get better.
TRANSIENT_STATUSES = frozenset({408, 425, 429, *range(500, 600)}) - {501}
#: Content types a result may be served as; a CDN may not know the type of an object.
IMAGE_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class DownloadError(ApiError):
    """A result could not be downloaded, or is not the image that was asked for.

    ``permanent`` when asking again cannot help (the result is gone, or is not the image asked for):
    only a new job can produce it. ``retryable`` when asking again soon may help (the way to it failed).
    An error that is neither (too many redirects, a file over the size limit) is not retried here.
    """

    def __init__(self, message: str, *, permanent: bool = False, retryable: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retryable = retryable and not permanent


class _CutTransfer(DownloadError):
    """Fewer bytes than announced: the transfer was cut, the file may be fine (transient)."""


class _Undecodable(DownloadError):
    """Bytes that do not decode as an image; permanent only once they are known to be the whole file."""

    def __init__(self, message: str, data: bytes, *, whole: bool) -> None:
        super().__init__(message, permanent=whole, retryable=not whole)
        self.digest = hashlib.sha256(data).hexdigest()


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


@dataclass(frozen=True)
class _Fetched:
    data: bytes
    content_type: str | None
    whole: bool  # the server announced a length and exactly that many bytes came


def download_image(
    url: str,
    *,
    expected_format: str | None,
    expected_size: tuple[int, int] | None = None,
    client: httpx2.Client | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    retry: RetryPolicy = DOWNLOAD_RETRY,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DownloadedImage:
    """Fetch one result URL (streamed, size-capped), retrying transient faults, and check the image whole.

    ``expected_format``: ``png``, ``jpg`` or ``webp``; None accepts any of them (a caller without the request).

    Raises :class:`DownloadError`; its ``permanent`` says whether only a new job can bring the image.
    """
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"result URL {url!r} is not http(s); refusing to fetch it", permanent=True)
    own = client is None
    http = client or new_download_client()
    try:
        once = functools.partial(_attempt, http, url, expected_format, expected_size, max_bytes)
        return _with_retries(once, retry, sleep, clock)
    finally:
        if own:
            http.close()


def new_download_client() -> httpx2.Client:
    """The client result downloads use: bounded redirects and timeouts, flexflow's User-Agent, no API key."""
    return httpx2.Client(
        timeout=DOWNLOAD_TIMEOUT,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={USER_AGENT_HEADER: USER_AGENT},
    )


def _with_retries(
    attempt_once: Callable[[set[str]], DownloadedImage],
    retry: RetryPolicy,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> DownloadedImage:
    started = clock()
    undecodable: set[str] = set()  # digests of bodies that did not decode: the same twice is the whole file
    attempt = 0
    while True:
        attempt += 1
        try:
            return attempt_once(undecodable)
        except _Undecodable as exc:
            undecodable.add(exc.digest)
            error: DownloadError = exc
        except DownloadError as exc:
            error = exc
        delay = retry.delay(attempt, _as_retry_input(error), clock() - started)
        if delay is None:
            raise _final(error, attempt)
        sleep(delay)


def _as_retry_input(error: DownloadError) -> ApiError:
    """What the policy reads: a 429 as :class:`RateLimited`, so its Retry-After (or default wait) applies."""
    return error.rate_limited if isinstance(error, _RateLimitedDownload) else error


class _RateLimitedDownload(DownloadError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, retryable=True)
        self.rate_limited = RateLimited(message, retry_after=retry_after)


def _final(error: DownloadError, attempts: int) -> DownloadError:
    """The error to raise, saying how often it was tried when that was more than once."""
    if attempts == 1:
        return error
    final = DownloadError(f"{error} (after {attempts} attempts)", permanent=error.permanent)
    final.__cause__ = error
    return final


def _attempt(
    http: httpx2.Client,
    url: str,
    expected_format: str | None,
    expected_size: tuple[int, int] | None,
    max_bytes: int,
    undecodable: set[str],
) -> DownloadedImage:
    fetched = _fetch(http, url, max_bytes)
    whole = fetched.whole or hashlib.sha256(fetched.data).hexdigest() in undecodable
    return check_image(
        url, fetched.data, expected_format, expected_size, content_type=fetched.content_type, whole=whole
    )


def _fetch(http: httpx2.Client, url: str, max_bytes: int) -> _Fetched:
    try:
        with http.stream("GET", url) as response:
            _check_status(url, response)
            buffer = bytearray()
            for chunk in response.iter_bytes():
                buffer.extend(chunk)
                if len(buffer) > max_bytes:
                    raise DownloadError(f"{url} is larger than the {max_bytes:,}-byte limit; refusing it")
            announced = _content_length(response)
            received = _bytes_received(response, buffer)
            if announced is not None and received < announced:
                raise _CutTransfer(
                    f"downloading {url} was cut: {received:,} of the {announced:,} bytes announced arrived",
                    retryable=True,
                )
            return _Fetched(bytes(buffer), response.headers.get("content-type"), announced == received)
    except httpx2.TooManyRedirects as exc:
        raise DownloadError(f"downloading {url} was redirected more than {http.max_redirects} times") from exc
    except httpx2.TimeoutException as exc:
        raise DownloadError(f"downloading {url} timed out ({type(exc).__name__})", retryable=True) from exc
    except httpx2.TransportError as exc:  # a dropped connection, a body cut short (h11 knows the length)
        raise DownloadError(f"downloading {url} failed: {type(exc).__name__}: {exc}", retryable=True) from exc
    except httpx2.HTTPError as exc:
        raise DownloadError(f"downloading {url} failed: {type(exc).__name__}: {exc}") from exc


def _bytes_received(response: httpx2.Response, body: bytearray) -> int:
    """What arrived, in the unit Content-Length counts: the body as sent, before a Content-Encoding is undone."""
    encoded = response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
    return response.num_bytes_downloaded if encoded else len(body)


def _check_status(url: str, response: httpx2.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in GONE_STATUSES:
        raise DownloadError(
            f"downloading {url} answered {status} (the result has expired or was purged)", permanent=True
        )
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise _RateLimitedDownload(f"downloading {url} answered 429 (rate limited)", retry_after)
    raise DownloadError(f"downloading {url} answered {status}", retryable=status in TRANSIENT_STATUSES)


def _content_length(response: httpx2.Response) -> int | None:
    value = response.headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def check_image(
    url: str,
    data: bytes,
    expected_format: str | None,
    expected_size: tuple[int, int] | None,
    *,
    content_type: str | None = None,
    whole: bool = True,
) -> DownloadedImage:
    """The bytes must be a whole image: served as one, of the requested format (magic bytes and decoder),
    complete to its last byte, fully decoded, and of the expected pixel size when one is given.

    ``whole``: the bytes are known to be the complete file, so failing to decode them is permanent.
    """
    fmt = _check_kind(url, data, expected_format, content_type)
    try:
        width, height = _decoded_size(data, fmt, expected_size)
    except _WrongImage as exc:
        raise DownloadError(f"{url} {exc}", permanent=True) from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError... for bad data
        cut = "" if whole else "; asking again, since the transfer may have been cut"
        raise _Undecodable(
            f"{url} is not a readable {fmt} image ({type(exc).__name__}: {exc}){cut}", data, whole=whole
        ) from exc
    return DownloadedImage(url, data, fmt, width, height, hashlib.sha256(data).hexdigest())


def _check_kind(url: str, data: bytes, expected_format: str | None, content_type: str | None) -> str:
    """The format the bytes are, by their magic bytes; it must be the one asked for (None: any of flux's)."""
    served = (content_type or "").split(";")[0].strip().lower()
    detected = next((fmt for fmt in MAGIC if _has_magic(data, fmt)), None)
    wanted = expected_format or detected or "png"
    if detected != wanted or (served and not served.startswith(IMAGE_CONTENT_TYPES)):
        as_what = f", served as {served!r}" if served else ""
        raise DownloadError(
            f"{url} is not a {expected_format or 'png, jpg or webp'} image (it starts with {data[:16]!r}{as_what}); "
            "the result URL served something else, such as an error page",
            permanent=True,
        )
    return wanted


def _has_magic(data: bytes, fmt: str) -> bool:
    return data.startswith(MAGIC[fmt]) and (fmt != "webp" or data[8:12] == b"WEBP")


class _WrongImage(ValueError):
    """A readable image, but not the one asked for (format, pixel size): permanent."""


def _decoded_size(data: bytes, expected_format: str, expected_size: tuple[int, int] | None) -> tuple[int, int]:
    """Open, check the header against what was asked, then decode every pixel and check the file's end."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format != PIL_FORMATS[expected_format]:
            raise _WrongImage(f"decodes as {image.format}, not {PIL_FORMATS[expected_format]}")
        width, height = image.size
        if expected_size is not None and (width, height) != expected_size:  # before decoding: no bomb is loaded
            raise _WrongImage(f"is {width}x{height}; expected {expected_size[0]}x{expected_size[1]}")
        image.load()  # every pixel: a truncated or corrupt body fails here, not in a reader's viewer
    _check_complete(data, expected_format)
    return width, height


def _check_complete(data: bytes, expected_format: str) -> None:
    """The file's own end marker: decoders forgive a missing tail that a reader's viewer may not."""
    if expected_format == "png" and not data.endswith(b"IEND\xaeB`\x82"):
        raise OSError("the png has no IEND chunk at its end: the file is incomplete")
    if expected_format == "jpg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise OSError("the jpg has no end-of-image marker: the file is incomplete")
    if expected_format == "webp" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise OSError("the webp's RIFF size does not match its length: the file is incomplete")


def first_unusable(
    urls: tuple[str, ...] | list[str],
    *,
    expected_format: str | None,
    expected_size: tuple[int, int] | None = None,
    retry: RetryPolicy = DOWNLOAD_RETRY,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadError | None:
    """Download and check every result of a job: the first permanent failure, else the first transient one,
    else None (all usable). A transient failure means "cannot tell now", not "unusable"."""
    transient: DownloadError | None = None
    with new_download_client() as http:
        for url in urls:
            try:
                download_image(
                    url,
                    expected_format=expected_format,
                    expected_size=expected_size,
                    client=http,
                    retry=retry,
                    sleep=sleep,
                )
            except DownloadError as exc:
                if exc.permanent:
                    return exc
                transient = transient or exc
    return transient
