"""Running the emulator: in-process on a free loopback port (tests, the demo), or as a command."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from flexflow.emulator.app import create_app
from flexflow.emulator.faults import FaultPlan, FaultRule
from flexflow.emulator.state import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorState

#: The key of the one JSON line ``flexflow emulator`` prints once it listens: ``{"emulator": URL}``.
ANNOUNCEMENT_KEY = "emulator"
#: Accepted API keys, comma-separated: a way to pass keys that no process listing shows.
API_KEYS_ENV = "FLEXFLOW_EMULATOR_API_KEYS"


def announced_url(line: str) -> str | None:
    """The URL in the line ``flexflow emulator`` prints once it listens; None for any other line."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None
    url = message.get(ANNOUNCEMENT_KEY) if isinstance(message, dict) else None
    return url if isinstance(url, str) else None


class EmulatorServer:
    """The emulator under uvicorn in a background thread; ``with EmulatorServer() as emu: emu.url``."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        faults: Sequence[FaultRule | dict[str, object]] = (),
        *,
        fault_seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        plan = FaultPlan(seed=fault_seed)
        plan.add(*faults)
        self.state = EmulatorState(config=config or EmulatorConfig(), faults=plan)
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(self.state), host=host, port=port, log_level="warning", lifespan="off", access_log=False
            )
        )
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    @property
    def faults(self) -> FaultPlan:
        return self.state.faults

    def accounting(self) -> dict[str, object]:
        return self.state.accounting()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being handled (a slow one a client gave up on may still be).

        A test calls this before it resets the state, so that a request left over from an earlier test
        cannot create a job in the fresh state.
        """
        deadline = time.monotonic() + timeout
        while self.state.requests_in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def received_requests(self) -> list[dict[str, Any]]:
        """Every request received (the last 10,000, oldest first), without its API key header."""
        return self.state.received_requests()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.run, name="flexflow-emulator", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the emulator could not start on {self.host}:{self.port}")
            self._thread.join(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C stops it)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


# -- the command line: every flag checked by its argparse type, so bad input exits 2 with a message ------


def port_number(text: str) -> int:
    port = _integer(text, "port")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 0 to 65535 (0 picks a free one), not {port}")
    return port


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be a finite number, 0 or more, not {text!r}")
    return value


def credits_balance(text: str) -> int:
    return _integer(text, "credits", minimum=0)


def seed(text: str) -> int:
    return _integer(text, "seed")


def body_limit(text: str) -> int:
    return _integer(text, "max body bytes", minimum=1)


def concurrent_jobs(text: str) -> int:
    return _integer(text, "max concurrent jobs", minimum=1)


def api_key(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise argparse.ArgumentTypeError("an API key must be non-empty, without surrounding spaces")
    return text


def fault_rule(text: str) -> FaultRule:
    try:
        return FaultRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_file(text: str) -> list[str]:
    """The keys in a file, one a line (blank lines and ``#`` comments skipped); never echoed back."""
    try:
        lines = Path(text).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable UTF-8 text"
        raise argparse.ArgumentTypeError(f"cannot read the API key file {text}: {reason}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise argparse.ArgumentTypeError(f"the API key file {text} holds no key (one key per line)")
    return keys


def _integer(text: str, what: str, minimum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}") from None
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"{what} must be {minimum} or more, not {value}")
    return value


def keys_from_environment() -> list[str]:
    return [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EmulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=8787, help="port to listen on; 0 picks a free one (default 8787)"
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        type=api_key,
        metavar="KEY",
        help=f"an accepted API key; repeatable; shows in process listings, prefer --api-key-file or ${API_KEYS_ENV}"
        f" (default: the test key {DEFAULT_TEST_KEY})",
    )
    parser.add_argument(
        "--api-key-file",
        action="append",
        dest="api_key_files",
        type=key_file,
        default=[],
        metavar="PATH",
        help=f"a file of accepted API keys, one a line; repeatable (also: ${API_KEYS_ENV}, comma-separated)",
    )
    parser.add_argument(
        "--inactive-key", action="append", default=[], type=api_key, metavar="KEY", help="a key answered with 403"
    )
    parser.add_argument("--queue-seconds", type=seconds, default=defaults.queue_seconds, help="time a job stays QUEUED")
    parser.add_argument(
        "--processing-seconds", type=seconds, default=defaults.processing_seconds, help="time a job stays PROCESSING"
    )
    parser.add_argument(
        "--retention-seconds", type=seconds, default=defaults.retention_seconds, help="time until results expire"
    )
    parser.add_argument("--credits", type=credits_balance, default=None, help="credit balance (default: unlimited)")
    parser.add_argument(
        "--result-shape", choices=("images", "string", "list"), default="images", help="shape of a job's result"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=fault_rule,
        metavar="RULE",
        help="a fault rule, e.g. rate_limit:count=2,route=submit or http_503:rate=0.1; repeatable",
    )
    parser.add_argument("--fault-seed", type=seed, default=0, help="seed of the random fault draws")
    parser.add_argument(
        "--max-body-bytes",
        type=body_limit,
        default=defaults.max_body_bytes,
        help=f"a larger request body is answered 413 (default {defaults.max_body_bytes})",
    )
    parser.add_argument(
        "--max-concurrent-jobs",
        type=concurrent_jobs,
        default=defaults.max_concurrent_jobs,
        metavar="N",
        help="a submit that would put more than N jobs of one API key in flight is answered 429 (default: no cap)",
    )


def accepted_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys of --api-key, --api-key-file and the environment, in that order; the test key if none."""
    keys = [*(args.api_keys or ()), *(key for keys in args.api_key_files for key in keys), *keys_from_environment()]
    return tuple(dict.fromkeys(keys)) or (DEFAULT_TEST_KEY,)


def serve(args: argparse.Namespace) -> int:
    config = EmulatorConfig(
        api_keys=accepted_keys(args),
        inactive_keys=tuple(args.inactive_key),
        queue_seconds=args.queue_seconds,
        processing_seconds=args.processing_seconds,
        retention_seconds=args.retention_seconds,
        credits=args.credits,
        result_shape=args.result_shape,
        max_body_bytes=args.max_body_bytes,
        max_concurrent_jobs=args.max_concurrent_jobs,
    )
    server = EmulatorServer(config, args.fault, fault_seed=args.fault_seed, host=args.host, port=args.port)
    try:
        server.start()
    except RuntimeError:
        # uvicorn has logged why (address in use, no such address, a privileged port).
        print(
            f"flexflow emulator: cannot listen on {args.host}:{args.port}; choose another --host or --port",
            file=sys.stderr,
        )
        return 2
    # One line a supervising process can read: where the emulator listens.
    print(json.dumps({ANNOUNCEMENT_KEY: server.url}), flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
