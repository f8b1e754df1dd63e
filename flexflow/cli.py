"""The ``flexflow`` command: validate, schema, plan, diff, run, emulator, report, pool."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

from flexflow import __version__
from flexflow.airflow.pools import pool_slots_problem
from flexflow.compiler.layout import described, task_layout
from flexflow.contract import output_size
from flexflow.contract.params import JsonScalar
from flexflow.contract.schema import request_schema
from flexflow.defaults import (
    MAX_JOBS_PER_RUN_ENV,
    MAX_PRICE_PER_MEGAPIXEL,
    POOL,
    PRICE_PER_MEGAPIXEL,
    deployment_limits,
    shown,
)
from flexflow.emulator.server import add_arguments as add_emulator_arguments
from flexflow.emulator.server import serve
from flexflow.errors import FlexflowError
from flexflow.run import RunError, check_connection_id
from flexflow.spec import SpecError, budget, find_spec_files, load_folder, load_spec, spec_schema
from flexflow.spec.model import Spec
from flexflow.spec.report import render_json, render_text, use_color
from flexflow.spec.schema import POOL_NAME_PATTERN

DEFAULT_HOME = Path(".flexflow/airflow-home")

#: The price ``flexflow plan`` estimates with unless told (a spec's budget has its own).
DEFAULT_PRICE_PER_MEGAPIXEL = PRICE_PER_MEGAPIXEL
EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
#: ``flexflow diff``, as ``terraform plan -detailed-exitcode``: 0 no changes, 2 changes, 1 any error
#: (its usage errors too: a CI step reading 2 as "changes" must never mistake a typo for one).
EXIT_DIFF_CHANGES, EXIT_DIFF_ERROR = 2, 1
DEFAULT_SPECS = "specs"


class PlanTask(TypedDict):
    """One task of ``flexflow plan`` (a row of its task table, an item of its JSON ``tasks``)."""

    task_id: str
    operator: str
    upstream: list[str]
    mapped: int | None
    arguments: dict[str, Any]  # constructor arguments; run-time inputs as {"xcom_from"} / {"variant_field"}


class PlanJob(TypedDict):
    """One image job of ``flexflow plan``; the ``fluxParams`` values as the spec resolved them."""

    image: str
    variant: str
    resolution: JsonScalar
    aspect_ratio: JsonScalar
    pixels: str
    output_format: JsonScalar


def _validate(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"flexflow validate: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    files = [str(f) for f in find_spec_files(args.paths)]
    result = load_folder(args.paths)
    if args.format == "json":
        print(render_json(result.problems, files))
    elif result.problems:
        print(render_text(result.problems, use_color(sys.stdout)))
        print(
            f"\n{len(result.problems)} problem(s) in {len({p.file for p in result.problems})} of {len(files)} file(s)"
        )
    else:
        print(f"{len(files)} spec file(s) valid")
    return EXIT_INVALID if result.problems else EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(request_schema() if args.request else spec_schema(), indent=2))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    if not Path(args.spec).is_file():
        print(f"flexflow plan: no such spec file: {args.spec}", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(render_text(exc.problems, use_color(sys.stderr)), file=sys.stderr)
        return EXIT_INVALID
    price = _plan_price(args.price_per_megapixel, spec)
    cap = deployment_limits().max_jobs_per_run  # the deployment's, which validation held the spec to
    jobs = spec.jobs()
    cost = budget.estimate(spec, price)  # the one estimate: `flexflow diff` and the budget checks use it too
    billed = cost.billed_megapixels
    tasks = [
        PlanTask(
            task_id=t.task_id,
            operator=t.operator,
            upstream=list(t.upstream),
            mapped=t.mapped,
            arguments=described(dict(t.arguments)),
        )
        for t in task_layout(spec).tasks
    ]
    plan_jobs = [
        PlanJob(
            image=image.name,
            variant=variant.label,
            resolution=flux["resolution"],
            aspect_ratio=flux["aspect_ratio"],
            pixels="x".join(map(str, output_size(flux))),
            output_format=flux["output_format"],
        )
        for image, variant, flux in jobs
    ]
    plan = {
        "dag_id": spec.dag_id,
        "file": spec.path,
        "schedule": spec.schedule,
        "connection_id": spec.connection_id,
        "publish_to": spec.publish.to,
        "tasks": tasks,
        "jobs": plan_jobs,
        "jobs_per_run": len(jobs),
        "max_jobs_per_run": cap,
        "megapixels_per_run": spec.megapixels,
        "billed_megapixels_per_run": billed,
        "credits_per_run": cost.credits,
        "price_per_megapixel": str(price),
        "estimated_cost_per_run": str(cost.usd),
        "budget": _plan_budget(spec),
        "reuse": spec.reuse,
        "review": {"required": True, "timeout_seconds": spec.publish.review_timeout.total_seconds()}
        if spec.publish.review
        else {"required": False},
    }
    if args.format == "json":
        print(json.dumps(plan, indent=2))
        return EXIT_OK
    print(f"{spec.dag_id}  ({spec.path})")
    print(f"schedule {spec.schedule or 'manual only'} | connection {spec.connection_id} | publish {spec.publish.to}")
    print(f"job cap: {cap} jobs per run ({MAX_JOBS_PER_RUN_ENV}); this spec makes {len(jobs)}\n")
    _table(
        ["task", "operator", "upstream", "instances"],
        [[t["task_id"], t["operator"], ", ".join(t["upstream"]) or "-", str(t["mapped"] or 1)] for t in tasks],
    )
    print()
    _table(
        ["image", "variant", "resolution", "aspect", "pixels", "format"],
        [
            [j["image"], j["variant"] or "-", j["resolution"], j["aspect_ratio"], j["pixels"], j["output_format"]]
            for j in plan_jobs
        ],
    )
    print(
        f"\njobs per run: {len(jobs)} | output megapixels: {spec.megapixels:g} | billed megapixels: {billed}"
        f" | estimated cost per run: ${cost.usd:.2f} (at ${price} per megapixel)"
    )
    print(_reuse_line(spec))
    if spec.publish.review:
        timeout = shown(spec.publish.review_timeout)
        print(f"review: required: images wait in a staging folder for an approval in Airflow (up to {timeout})")
    planned = _plan_budget(spec)
    if planned is not None:
        print(_budget_line(planned))
    return EXIT_OK


def _reuse_line(spec: Spec) -> str:
    if spec.reuse:
        return "reuse: on: a run pays only for images not already published under the publish root"
    why = "reuse: false in the spec" if spec.seeds_fixed else "an image has no fixed seed; set reuse: true to reuse"
    return f"reuse: off ({why}): every run pays for every image"


def _plan_price(given: str | None, spec: Spec) -> Decimal:
    """The flag's price, else the spec's budget's, else the default (:func:`budget.price_of`, as `diff` prices)."""
    return budget.price_of(spec, None if given is None else Decimal(given))


def _plan_budget(spec: Spec) -> dict[str, Any] | None:
    """The budget's caps, one run's estimate at the budget's price, and what each per-run cap leaves."""
    if spec.budget is None:
        return None
    found = budget.caps(spec.budget)
    cost = budget.estimate(spec, spec.budget.price_per_megapixel)
    return {
        "caps": found,
        "price_per_megapixel": str(spec.budget.price_per_megapixel),
        "estimate_per_run": cost.to_dict(),
        "headroom_per_run": budget.headroom(found, cost),
    }


def _budget_line(planned: dict[str, Any]) -> str:
    caps = planned["caps"]
    left = planned["headroom_per_run"]
    shown = [
        f"{key} {budget.shown(key, Decimal(value))}"
        + (f" (headroom {budget.shown(key, Decimal(left[key]))})" if key in left else "")
        for key, value in caps.items()
    ]
    cost = planned["estimate_per_run"]
    return (
        f"budget: {', '.join(shown)} | estimate per run: {cost['credits']} credits,"
        f" ${Decimal(cost['usd']):.2f} at ${planned['price_per_megapixel']} per megapixel"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print left-aligned columns; every cell is shown as ``str(cell)``."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexflow", description="YAML specs -> Airflow DAGs generating Flux 2 Flex images"
    )
    parser.add_argument("--version", action="version", version=f"flexflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="validate spec files and folders (default specs/)")
    validate.add_argument("paths", nargs="*", default=["specs"], metavar="PATH")
    validate.add_argument("--format", choices=("text", "json"), default="text")
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser("schema", help="print the spec JSON Schema")
    schema.add_argument("--request", action="store_true", help="print the Flux 2 Flex request schema instead")
    schema.set_defaults(handler=_schema)

    plan = commands.add_parser("plan", help="show the tasks, jobs, megapixels and cost of one run of a spec")
    plan.add_argument("spec", metavar="SPEC")
    plan.add_argument("--format", choices=("text", "json"), default="text")
    # No default here: None lets a spec's budget price win over DEFAULT_PRICE_PER_MEGAPIXEL (_plan_price).
    _add_price_argument(
        plan,
        f"USD per billed megapixel (default: the spec's budget's, else {DEFAULT_PRICE_PER_MEGAPIXEL})",
        default=None,
    )
    plan.set_defaults(handler=_plan)

    diff = commands.add_parser(
        "diff",
        help="what changes between two revisions (or folders) of the specs, and the spend it changes",
        description=(
            "Compare the specs of BASE and HEAD (git revisions or folders; HEAD defaults to the working tree)."
            " Exit 0: no changes; 2: changes; 1: an error (an invalid spec on either side, a bad revision,"
            " bad usage), as `terraform plan -detailed-exitcode`."
        ),
    )
    diff.add_argument("base", metavar="BASE", help="a git revision (branch, tag, commit) or a folder")
    diff.add_argument("head", metavar="HEAD", nargs="?", help="a git revision or a folder (default: the working tree)")
    diff.add_argument(
        "--specs",
        default=DEFAULT_SPECS,
        metavar="PATH",
        help=f"the specs folder, relative to the repository root or to each folder given (default {DEFAULT_SPECS})",
    )
    diff.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    diff.set_defaults(handler=_diff)

    emulator = commands.add_parser("emulator", help="run the local Apiframe API emulator")
    add_emulator_arguments(emulator)
    emulator.set_defaults(handler=serve)

    run = commands.add_parser("run", help="run a spec's DAG once through Airflow, end to end")
    run.add_argument("spec", metavar="SPEC")
    run.add_argument(
        "--connection",
        metavar="ID",
        type=_connection_id,
        help="use this Airflow connection (type apiframe) instead of the embedded emulator",
    )
    run.add_argument(
        "--home",
        default=str(DEFAULT_HOME),
        type=_home,
        help=f"private AIRFLOW_HOME for the run (default {DEFAULT_HOME}); one run at a time uses it",
    )
    run.set_defaults(handler=_run)

    report = commands.add_parser("report", help="what runs spent, per spec and per day, from the ledger")
    report.add_argument("targets", nargs="+", metavar="TARGET_OR_SPECS")
    report.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="only runs of this UTC day and later")
    report.add_argument("--format", choices=("text", "json"), default="text")
    report.add_argument(
        "--conn-id",
        metavar="ID",
        help="the Airflow connection that reaches targets given as object store URLs (s3://bucket/folder); "
        "a spec's publish root comes with its own publish.conn_id",
    )
    _add_price_argument(
        report,
        f"USD per billed megapixel (default {DEFAULT_PRICE_PER_MEGAPIXEL})",
        default=str(DEFAULT_PRICE_PER_MEGAPIXEL),
    )
    report.set_defaults(handler=_report)

    pool = commands.add_parser(
        "pool",
        help="create or update the Airflow pool that caps jobs in flight, in this AIRFLOW_HOME's database",
        description="Same as: airflow pools set NAME N 'flexflow: Apiframe jobs in flight' --include-deferred",
    )
    pool.add_argument("--slots", required=True, type=_pool_slots, metavar="N", help="the team's concurrent-job limit")
    pool.add_argument(
        "--name",
        default=POOL,
        type=_pool_name,
        help=f"the pool's name, as specs' `pool:` key names it (default {POOL})",
    )
    pool.set_defaults(handler=_pool)
    return parser


def _diff(args: argparse.Namespace) -> int:
    # Only for this command: git and the diff's rendering.
    from flexflow.spec.diff import diff, load_side
    from flexflow.spec.diff_report import render_json, render_markdown
    from flexflow.spec.diff_report import render_text as render_diff_text
    from flexflow.spec.sources import SourceError, SpecTexts, folder_texts, repository_root, revision_texts, specs_path

    def side(given: str | None) -> SpecTexts:
        specs = specs_path(args.specs)
        if given is None:
            return folder_texts("working tree", repository_root(Path.cwd()), specs, "")
        if Path(given).is_dir():
            return folder_texts(given, Path(given), specs, given)
        return revision_texts(given, repository_root(Path.cwd()), specs)

    try:
        base, head = side(args.base), side(args.head)
    except SourceError as exc:
        print(f"flexflow diff: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not base.exists and not head.exists:
        print(f"flexflow diff: neither side has a specs folder {args.specs!r}; give --specs", file=sys.stderr)
        return EXIT_INVALID
    found = diff(load_side(base), load_side(head))
    render = {"json": render_json, "markdown": render_markdown, "text": render_diff_text}[args.format]
    print(render(found))
    if found.has_invalid:
        return EXIT_DIFF_ERROR
    return EXIT_DIFF_CHANGES if found.has_changes else EXIT_OK


def _add_price_argument(parser: argparse.ArgumentParser, help: str, *, default: str | None) -> None:
    """``--price-per-megapixel``, checked by ``_price``: one flag, one rule, for every command that prices jobs."""
    parser.add_argument("--price-per-megapixel", default=default, type=_price, help=help)


def _report(args: argparse.Namespace) -> int:
    from flexflow.publishing.ledger import LedgerError, ledger_folders, read_records, render_report, summed

    try:
        records = read_records(ledger_folders(args.targets, args.conn_id), args.since)
    except LedgerError as exc:
        print(f"flexflow report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = summed(records, Decimal(args.price_per_megapixel))
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else render_report(report))
    return EXIT_OK


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text) if len(text) == len("YYYY-MM-DD") else date.fromisoformat("")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day: give YYYY-MM-DD, e.g. 2026-12-01") from None


def _pool(args: argparse.Namespace) -> int:
    from flexflow.airflow.pools import set_pool  # imports Airflow's models: only for this command

    try:
        set_pool(args.name, args.slots)
    except Exception as exc:
        print(
            f"flexflow pool: cannot write pool {args.name!r} to the Airflow database of AIRFLOW_HOME="
            f"{os.environ.get('AIRFLOW_HOME', '~/airflow')} ({type(exc).__name__}); run `airflow db migrate` first",
            file=sys.stderr,
        )
        return EXIT_INVALID
    print(f"pool {args.name}: {args.slots} slot(s), counting deferred tasks")
    return EXIT_OK


def _pool_slots(text: str) -> int:
    try:
        slots = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"slots must be an integer, not {text!r}") from None
    problem = pool_slots_problem(slots)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return slots


def _pool_name(text: str) -> str:
    if not re.fullmatch(POOL_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a pool name: 1 to 256 of letters, digits, _ . -")
    return text


def _run(args: argparse.Namespace) -> int:
    if not Path(args.spec).is_file():
        print(f"flexflow run: no such spec file: {args.spec}", file=sys.stderr)
        return EXIT_USAGE
    from flexflow.run import run  # the emulator and the publishing code: only for this command

    return run(args)


def _price(text: str) -> str:
    try:
        price = Decimal(text)
        if not price.is_finite() or not 0 <= price <= MAX_PRICE_PER_MEGAPIXEL:
            raise ValueError
    except (ArithmeticError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a price: give a number from 0 to {MAX_PRICE_PER_MEGAPIXEL} (USD), e.g. 0.05"
        ) from None
    return text


def _connection_id(text: str) -> str:
    try:
        return check_connection_id(text)
    except RunError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _home(text: str) -> str:
    """A folder that exists or can be created: refused here, before anything is written."""
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} holds a NUL character: no folder can have that name")
    try:
        path = Path(text).absolute()
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder: give a folder for the run's home")
        existing = next(p for p in (path, *path.parents) if p.exists())
    except (OSError, ValueError):  # a NUL in the path, a name too long, ...
        raise argparse.ArgumentTypeError(f"{text!r} cannot be a folder on this system") from None
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot be created: {existing} is not a folder you can write to; give another --home"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)  # a usage error exits 2 (SystemExit), after argparse explains it
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and _command_of(argv) == "diff":
            return EXIT_DIFF_ERROR  # for diff, 2 means "changes": a usage error must not read as one
        raise
    try:
        return int(args.handler(args))
    except FlexflowError as exc:
        print(f"flexflow: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:  # `flexflow plan ... | head`: the reader has all it wanted
        sys.stderr.close()
        return EXIT_OK


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


if __name__ == "__main__":
    sys.exit(main())
