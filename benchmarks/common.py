"""What the benchmark scripts share: procfs measurements, a percentile, the emulator in a child process, and
the seeded generator of valid flexflow specs.

How the scripts import it
    ``from common import ...``, a plain sibling import. Every script is run by its path
    (``.venv/bin/python benchmarks/<name>.py``, from any working directory), and Python puts the
    script's own folder first on ``sys.path``, so ``common`` is found without touching ``sys.path``;
    the worker and helper processes the scripts start run the script by its path too. ``benchmarks``
    is deliberately not a package (no ``__init__.py``, nothing installed): a relative import
    (``from .common import``) would fail for a script run by its path.

What this module imports
    Only the standard library, and only modules the emulator-driven scripts load anyway: their
    worker processes measure their RSS after their imports, and those baselines must not move.
    The spec generator imports PyYAML and flexflow's parameter table when it is called (which also
    lets validate_specs.py and parse_dags.py put the repository on ``sys.path`` first).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flexflow.contract.params import FluxParam

#: The repository: the working directory of every child process.
ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# -- measurements (this process from /proc/self, another one from /proc/PID) -------------------------


def rss_bytes() -> int:
    """Current resident set size of this process, from /proc/self/statm (cheap enough for frequent samples)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def vm_rss_bytes() -> int:
    """Current resident set size of this process: VmRSS of /proc/self/status."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image: VmHWM of /proc/self/status.

    Not ``getrusage().ru_maxrss``: Linux carries the parent's peak across fork+exec into it, so a
    child process started by a bigger supervisor would report the supervisor's peak.
    """
    return _status_bytes("VmHWM")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


# -- reporting ---------------------------------------------------------------------------------------


@contextmanager
def stage(text: str) -> Iterator[None]:
    """Print ``text ...`` and, when the block is done, the seconds it took."""
    print(f"  {text} ...", end="", flush=True)
    started = time.perf_counter()
    yield
    print(f" {time.perf_counter() - started:.1f} s", flush=True)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Rows of cells as aligned text: the first column left-aligned, the others right, dashes under the headers."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(headers), indent + "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


# -- child processes ---------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Run in each child before exec: the kernel sends it SIGTERM when this process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Emulator:
    """A running emulator, as far as the benchmarks talk to it besides the API."""

    url: str
    pid: int

    def accounting(self, timeout: float = 30.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_emulator/accounting", timeout=timeout) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_emulator/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


@contextmanager
def emulator_process(
    queue_seconds: float,
    processing_seconds: float,
    *,
    api_key: str | None = None,
    log: IO[str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Emulator]:
    """``flexflow emulator`` on a free port in a child process, killed on exit whatever happens.

    Its stderr goes to ``log`` when given (a file open for writing), else to a temporary file whose
    end is quoted if the emulator does not start within ``timeout`` seconds.
    """
    command = [
        sys.executable, "-m", "flexflow.cli", "emulator", "--port", "0",
        "--queue-seconds", str(queue_seconds), "--processing-seconds", str(processing_seconds),
    ]  # fmt: skip
    if api_key is not None:
        command += ["--api-key", api_key]
    with ExitStack() as stack:
        stderr = log if log is not None else stack.enter_context(tempfile.TemporaryFile("w+"))
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=die_with_parent
        )
        try:
            yield Emulator(_listening_url(process, stderr, timeout), process.pid)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()


def _listening_url(process: subprocess.Popen[str], stderr: IO[str], timeout: float) -> str:
    """The URL from the one JSON line the emulator prints once it listens."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    line = process.stdout.readline() if ready else ""
    try:
        return str(json.loads(line)["emulator"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        if stderr.readable():
            stderr.seek(0)
            where = f"; its stderr:\n{stderr.read()[-2000:]}"
        else:
            where = f" (its stderr is in {stderr.name})"
        raise RuntimeError(f"the emulator did not start: {line!r}{where}") from exc


# -- generated specs ---------------------------------------------------------------------------------

WORDS = [
    "spring", "winter", "summer", "autumn", "hero", "story", "banner", "square", "detail", "launch",
    "aurora", "harbor", "meadow", "city", "night", "studio", "product", "social", "poster", "teaser",
]  # fmt: skip
PROMPTS = (
    "Hero banner for {{ params.campaign }}, bold type, {word} palette",
    "A {word} scene at golden hour, cinematic, shallow depth of field",
    "Product shot of the {word} collection on a marble plinth, soft studio light",
    "Vertical story background for {{ params.campaign }} ({word}), {{ ds }}",
    "Flat illustration of a {word} skyline, pastel colors, no text",
)
#: Only with ``SpecShape.extras``, which defines ``params.discount``.
DISCOUNT_PROMPT = "Winter sale banner, headline 'UP TO {{ params.discount }} OFF', {word} pine forest"
TEAMS = ["brand-team", "web-shop", "product-marketing", "growth", "social"]
HEADER = "# yaml-language-server: $schema=../schemas/flexflow-spec.schema.json\n"


@dataclass(frozen=True, kw_only=True)
class SpecShape:
    """What differs between the benchmarks' generated specs (everything else is drawn alike)."""

    #: ``description``, formatted with ``index`` and ``dag_id``.
    description: str
    #: The schedules drawn from (None: manual).
    schedules: Sequence[str | None]
    #: ``defaults`` duration keys (``timeout``, ``retry_delay``...) and the values each is drawn from.
    default_durations: Mapping[str, Sequence[str]]
    #: The share of specs that set each of ``default_durations``; 1 sets them all without a draw.
    default_duration_share: float
    #: Per-image duration keys: (the share of images that set it, the values drawn from).
    image_durations: Mapping[str, tuple[float, Sequence[str]]]
    #: More of the spec format: owners, connection ids, a discount param and a prompt using it,
    #: webhooks, S3 publishing, publish filenames with the job id, assets, manifests off.
    extras: bool


def flux_value(param: FluxParam, rng: random.Random) -> Any:
    """A value the contract allows for ``param``."""
    if param.choices:
        return rng.choice(param.choices)
    if param.url:
        return f"https://assets.example.com/ref/{rng.choice(WORDS)}-{rng.randrange(100)}.jpg"
    if param.type == "boolean":
        return rng.random() < 0.5
    if param.type == "number":
        value = rng.choice(param.allowed_numbers())
        return float(value) if value != value.to_integral_value() else int(value)
    if param.has_range:
        return rng.randint(int(Decimal(str(param.minimum))), int(Decimal(str(param.maximum))))
    return rng.randrange(1, 2**31)


def flux_params(rng: random.Random, count: int) -> dict[str, Any]:
    """``count`` flux parameters with allowed values (plus an image_prompt that image_prompt_strength needs)."""
    from flexflow.contract.params import FLUX_PARAMS

    params = {p.name: flux_value(p, rng) for p in rng.sample(FLUX_PARAMS, count)}
    if "image_prompt_strength" in params and "image_prompt" not in params:
        params["image_prompt"] = flux_value(next(p for p in FLUX_PARAMS if p.url), rng)
    return params


def variants(rng: random.Random) -> dict[str, list[Any]]:
    """One or two variant keys with two or three distinct values each."""
    from flexflow.contract.params import FLUX_PARAMS

    candidates = [p for p in FLUX_PARAMS if p.choices or (p.type in ("number", "integer") and p.has_range)]
    result: dict[str, list[Any]] = {}
    for param in rng.sample(candidates, rng.choice([1, 1, 2])):
        values: list[Any] = []
        wanted = rng.choice([2, 3])
        while len(values) < wanted:
            value = flux_value(param, rng)
            if value not in values:
                values.append(value)
        result[param.name] = values
    return result


def spec_data(index: int, images: int, rng: random.Random, shape: SpecShape) -> dict[str, Any]:
    """The data of one valid spec with ``images`` images (at most ``len(WORDS)``)."""
    schedule = rng.choice(shape.schedules)
    dag_id = f"bench_{index:04d}_{rng.choice(WORDS)}"
    data: dict[str, Any] = {
        "version": 1,
        "dag_id": dag_id,
        "description": shape.description.format(index=index, dag_id=dag_id),
    }
    data["schedule"] = schedule
    if schedule is not None:
        data["start_date"] = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        data["catchup"] = False
    data["tags"] = rng.sample(WORDS, 2)
    if shape.extras:
        data["owner"] = rng.choice(TEAMS)
        if rng.random() < 0.3:
            data["connection_id"] = rng.choice(["apiframe_default", "apiframe_marketing"])
    data["params"] = {"campaign": f"{rng.choice(WORDS).title()} {2026 + index % 3}"}
    if shape.extras:
        data["params"]["discount"] = "30%"
    defaults: dict[str, Any] = {"flux": flux_params(rng, rng.randint(1, 4)), "retries": rng.randint(0, 5)}
    for key, choices in shape.default_durations.items():
        if shape.default_duration_share >= 1 or rng.random() < shape.default_duration_share:
            defaults[key] = rng.choice(choices)
    data["defaults"] = defaults
    prompts = (*PROMPTS, DISCOUNT_PROMPT) if shape.extras else PROMPTS
    data["images"] = []
    for name in rng.sample(WORDS, images):
        image: dict[str, Any] = {"name": name, "prompt": rng.choice(prompts).replace("{word}", rng.choice(WORDS))}
        if rng.random() < 0.8:
            image["flux"] = flux_params(rng, rng.randint(1, 5))
        if rng.random() < 0.3:
            image["variants"] = variants(rng)
        for key, (share, choices) in shape.image_durations.items():
            if rng.random() < share:
                image[key] = rng.choice(choices)
        if shape.extras and rng.random() < 0.1:
            image["webhook_url"] = f"https://hooks.example.com/flexflow/{dag_id}"
        data["images"].append(image)
    data["publish"] = _publish(dag_id, rng, shape.extras)
    return data


def _publish(dag_id: str, rng: random.Random, extras: bool) -> dict[str, Any]:
    local = f"file:///tmp/flexflow/bench/{dag_id}/{{{{ ds }}}}"
    if not extras:
        return {"to": local, "filename": "{image}{variant}.{ext}", "manifest": True}
    remote = rng.random() < 0.3
    publish: dict[str, Any] = {
        "to": f"s3://assets-bucket/{dag_id}/{{{{ ds }}}}" if remote else local,
        "filename": rng.choice(["{image}{variant}.{ext}", "{image}{variant}-{job_id}.{ext}"]),
        "manifest": rng.random() < 0.8,
    }
    if remote:
        publish["conn_id"] = "aws_assets"
    if rng.random() < 0.3:
        publish["asset"] = f"flexflow://assets/{dag_id}"
    return publish


def generate_specs(folder: Path, count: int, images: int, seed: int, shape: SpecShape) -> list[Path]:
    """Write ``count`` valid specs (``spec_0000.yaml``...) drawn from ``seed`` into ``folder``; their paths."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = []
    for index in range(count):
        text = yaml.safe_dump(spec_data(index, images, rng, shape), sort_keys=False, default_flow_style=None, width=120)
        file = folder / f"spec_{index:04d}.yaml"
        file.write_text(HEADER + text, encoding="utf-8")
        files.append(file)
    return files
