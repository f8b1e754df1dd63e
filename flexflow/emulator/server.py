"""Running the emulator: in-process on a free loopback port (tests, the demo), or as a command."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import uvicorn

from flexflow.emulator.app import create_app
from flexflow.emulator.faults import FaultPlan, FaultRule
from flexflow.emulator.state import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorState

#: The key of the one JSON line ``flexflow emulator`` prints once it listens: ``{"emulator": URL}``.
ANNOUNCEMENT_KEY = "emulator"


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EmulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="port to listen on; 0 picks a free one (default 8787)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"an accepted API key; repeatable (default: the test key {DEFAULT_TEST_KEY})",
    )
    parser.add_argument("--inactive-key", action="append", default=[], metavar="KEY", help="a key answered with 403")
    parser.add_argument("--queue-seconds", type=float, default=defaults.queue_seconds, help="time a job stays QUEUED")
    parser.add_argument(
        "--processing-seconds", type=float, default=defaults.processing_seconds, help="time a job stays PROCESSING"
    )
    parser.add_argument(
        "--retention-seconds", type=float, default=defaults.retention_seconds, help="time until results expire"
    )
    parser.add_argument("--credits", type=int, default=None, help="credit balance (default: unlimited)")
    parser.add_argument(
        "--result-shape", choices=("images", "string", "list"), default="images", help="shape of a job's result"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        type=FaultRule.parse,
        metavar="RULE",
        help="a fault rule, e.g. rate_limit:count=2,route=submit or http_503:rate=0.1; repeatable",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the random fault draws")


def serve(args: argparse.Namespace) -> int:
    config = EmulatorConfig(
        api_keys=tuple(args.api_keys or (DEFAULT_TEST_KEY,)),
        inactive_keys=tuple(args.inactive_key),
        queue_seconds=args.queue_seconds,
        processing_seconds=args.processing_seconds,
        retention_seconds=args.retention_seconds,
        credits=args.credits,
        result_shape=args.result_shape,
    )
    server = EmulatorServer(config, args.fault, fault_seed=args.fault_seed, host=args.host, port=args.port)
    server.start()
    # One line a supervising process can read: where the emulator listens.
    print(json.dumps({ANNOUNCEMENT_KEY: server.url}), flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
