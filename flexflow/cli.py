"""The ``flexflow`` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flexflow import __version__
from flexflow.client import FlexflowError, FluxClient
from flexflow.contract import MODEL_ID, apply_defaults, output_size
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorServer
from flexflow.emulator.server import add_arguments as add_emulator_arguments
from flexflow.emulator.server import serve
from flexflow.publishing.download import download_image

DEMO_PROMPT = "Spring sale hero banner, bold type, pastel palette"


def _demo(args: argparse.Namespace) -> int:
    """Start the emulator, submit one job through the client, wait for it and store the image."""
    config = EmulatorConfig(queue_seconds=0.5, processing_seconds=1.5)
    flux = {"resolution": "1MP", "aspect_ratio": "16:9", "output_format": "png", "seed": 42}
    with EmulatorServer(config) as emulator, FluxClient(emulator.url, DEFAULT_TEST_KEY) as client:
        print(f"emulator listening on {emulator.url}")
        job_id = client.submit({"prompt": args.prompt, "model": MODEL_ID, "fluxParams": flux}, "flexflow-demo")
        print(f"submitted job {job_id}")
        job = client.get_job(job_id)
        while not job.is_terminal:
            time.sleep(0.5)
            job = client.get_job(job_id)
            print(f"  {job.status.value} {job.progress or 0}%")
        if not job.result_urls:
            print(f"job ended {job.status.value}: {job.error}", file=sys.stderr)
            return 1
        params = apply_defaults(flux)
        image = download_image(
            job.result_urls[0], expected_format=str(params["output_format"]), expected_size=output_size(params)
        )
    target = Path(args.out) / f"{job_id}.{image.format}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(image.data)
    print(f"image ({image.width}x{image.height}, {image.size_bytes:,} bytes, sha256 {image.sha256[:12]}) -> {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"flexflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulator = commands.add_parser("emulator", help="run the local Apiframe API emulator")
    add_emulator_arguments(emulator)
    emulator.set_defaults(handler=serve)

    demo = commands.add_parser("demo", help="submit one job to an in-process emulator and store the image")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--out", default="out/demo", help="folder for the image (default out/demo)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except FlexflowError as exc:
        print(f"flexflow: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
