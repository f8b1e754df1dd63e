"""Parse benchmark: flexflow's DAG-folder loader against a hand-written DAG file and dag-factory 1.1.

What runs
    ``--specs`` valid specs (default 200) of ``--images`` images each (default 5) are generated into a
    temporary folder from a fixed seed: realistic specs (cron, preset and manual schedules, defaults,
    params, per-image flux settings, about a third of the images with variants of one or two keys).
    From the same specs (as flexflow validates them, every default applied) two baselines are written:

    hand-written  one Python DAG file that builds the same DAGs literally: ``with DAG(...)``, a
                  ``TaskGroup`` per image, ``FluxFlexOperator`` -> ``FluxJobSensor`` ->
                  ``PublishImageOperator`` with the same arguments (``.partial().expand()`` for
                  variants), then ``FinalizeRunOperator``. No YAML, no validation.
    dag-factory   dag-factory 1.1 YAML, one file per spec, the same operator classes by import path
                  with the same arguments (``partial``/``expand`` for variants, timedeltas as
                  ``__type__: datetime.timedelta``), loaded by a DAG file calling
                  ``dagfactory.load_yaml_dags(globals_dict=globals(), dags_folder=...)``. What dag-factory
                  cannot express the same way is listed in the output (task ids in groups, XCom passing
                  of unmapped tasks, its own tag and doc_md addition).
    flexflow      the project's own DAG file ``dags/flexflow_dags.py``, pointed at the specs with
                  ``FLEXFLOW_SPECS_DIR``; with its on-disk spec cache (``FLEXFLOW_CACHE_DIR``) warm
                  (a cache folder primed by an earlier parse) and cold (a fresh, empty cache folder).

How it is measured
    Like Airflow 3's DAG processor, every measurement is a fresh interpreter (``python -P -c``) that
    imports the DAG file with ``importlib.machinery.SourceFileLoader`` (Airflow's way) and counts the
    DAG objects in its globals. Bytecode is cached as in a default deployment (``PYTHONDONTWRITEBYTECODE``
    is dropped), in a private ``PYTHONPYCACHEPREFIX`` tree so that no source folder is written to.
    Before the clock, each child imports what all three share and the DAG processor has loaded anyway:
    ``airflow.sdk`` and its ``DAG``, ``TaskGroup``, ``BaseOperator`` and ``BaseSensorOperator``. On the
    clock, in this order: the flexflow operator modules (``ops``), the framework
    (``flexflow.compiler.loader`` or ``dagfactory``; none for the hand-written file), then the DAG file
    itself (``file``); ``total`` is their sum, what a parse of that file costs. An untimed first round
    compiles the bytecode, primes the warm cache and checks that the three produce the same DAGs
    (exit 1 if not). Then ``--rounds`` rounds, each variant once per round, interleaved, for a noisy
    2-core machine; the median and min are shown.

    Targets (on the median total; flexflow with a warm cache when the loader has a cache, since
    Airflow re-parses unchanged files every 30 s; the cold numbers are printed too):
        flexflow / hand-written   <= 1.25
        dag-factory / flexflow    >= 3
        --big (1,000) specs       < 10 s per parse, in a fresh process (Airflow's import timeout is 30 s)

    The exit status is 1 when a target is missed or the three do not build the same DAGs.
    ``--profile`` prints the top cumulative entries of a cProfile of flexflow's parse (warm and cold);
    it is printed anyway when the 1.25x target is missed.

Run::

    .venv/bin/python benchmarks/parse_dags.py
    .venv/bin/python benchmarks/parse_dags.py --specs 200 --images 5 --rounds 3 --big 1000 --json out/parse.json
    .venv/bin/python benchmarks/parse_dags.py --rounds 1 --big 0 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, WORDS, SpecShape, generate_specs

sys.path.insert(0, str(ROOT))

from flexflow.spec.folder import load_folder
from flexflow.spec.model import Spec, thawed

PYTHON = sys.executable
FLEXFLOW_DAG_FILE = ROOT / "dags" / "flexflow_dags.py"

TARGET_VS_HANDWRITTEN = 1.25
TARGET_VS_DAGFACTORY = 3.0
TARGET_BIG_SECONDS = 10.0

SHARED_IMPORTS = "import airflow.sdk\nfrom airflow.sdk import DAG, BaseOperator, BaseSensorOperator, TaskGroup"
OPERATOR_MODULES = ["flexflow.airflow.operators", "flexflow.airflow.sensors", "flexflow.publishing.operators"]

HAND = "hand-written"
FACTORY = "dag-factory"
WARM = "flexflow (warm cache)"
COLD = "flexflow (cold cache)"
PLAIN = "flexflow"  # the loader has no cache

# -- the specs -----------------------------------------------------------------------------------

SCHEDULES = ["0 6 * * MON", "30 5 * * *", "0 */4 * * *", "15 7 1 * *", "@daily", "@weekly", "@hourly", None]
DURATIONS = {
    "retry_delay": ["30s", "1m", "2m", "5m", "PT2M"],
    "timeout": ["10m", "15m", "20m", "30m", "1h", "1h30m", "PT10M"],
    "poll_interval": ["5s", "10s", "15s", "30s"],
}
#: Realistic specs: every feature the compiler turns into DAG and task arguments.
SHAPE = SpecShape(
    description="Benchmark spec {index}: {dag_id}",
    schedules=SCHEDULES,
    default_durations=DURATIONS,
    default_duration_share=0.6,
    image_durations={"poll_interval": (0.2, DURATIONS["poll_interval"]), "timeout": (0.1, DURATIONS["timeout"])},
    extras=True,
)


def validated_specs(folder: Path) -> list[Spec]:
    """The specs as flexflow validates them (every default applied): the data both baselines are written from."""
    result = load_folder([folder])
    if result.problems:
        listed = "\n".join(str(p) for p in result.problems[:10])
        raise SystemExit(f"the generated specs are not valid ({len(result.problems)} problem(s)):\n{listed}")
    return list(result.specs)


# -- the hand-written DAG file -------------------------------------------------------------------


def _py(value: Any) -> str:
    """A Python literal, as someone would type it."""
    if isinstance(value, timedelta):
        return f"timedelta(seconds={value.total_seconds():g})"
    if isinstance(value, datetime):
        return f"datetime({value.year}, {value.month}, {value.day}, {value.hour}, {value.minute}, tzinfo=UTC)"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    return repr(value)


def _call(indent: str, head: str, kwargs: Mapping[str, Any], raw: Mapping[str, str] | None = None) -> str:
    lines = [f"{indent}{head}("]
    lines += [f"{indent}    {key}={code}," for key, code in (raw or {}).items()]
    lines += [f"{indent}    {key}={_py(value)}," for key, value in kwargs.items()]
    return "\n".join(lines) + f"\n{indent})"


def doc_md(spec: Spec) -> str:
    """The DAG's doc, as flexflow writes it (a difference is reported, not fatal)."""
    return (
        f"# {spec.dag_id}\n\n{spec.description or ''}\n\n"
        f"Compiled by flexflow from `{spec.path}`: {len(spec.images)} image(s), {spec.job_count} job(s) per run, "
        f"{spec.megapixels:g} MP. Publishes to `{spec.publish.to}`; Asset `{spec.publish.asset}`.\n\n"
        f"```yaml\n{spec.source.rstrip()}\n```\n"
    )


def _dag_kwargs(spec: Spec) -> dict[str, Any]:
    return {
        "dag_id": spec.dag_id,
        "description": spec.description,
        "doc_md": doc_md(spec),
        "schedule": spec.schedule,
        "start_date": spec.start_date,
        "catchup": spec.catchup,
        "tags": [*spec.tags, "flexflow"],
        "params": thawed(spec.params),
        "default_args": {"owner": spec.owner},
    }


@dataclass
class ImageArgs:
    """The arguments of one image's three tasks, exactly as the compiler passes them."""

    submit: dict[str, Any]
    wait: dict[str, Any]
    publish: dict[str, Any]
    overrides: list[dict[str, Any]] | None  # the mapped values when the image has variants


def image_args(spec: Spec, index: int, submit_task_id: str) -> ImageArgs:
    image = spec.images[index]
    retry = {"retries": image.retries, "retry_delay": image.retry_delay}
    poll = {"poll_interval": image.poll_interval.total_seconds(), "apiframe_conn_id": spec.connection_id}
    submit = {
        "prompt": image.prompt,
        "flux": dict(image.flux),
        "webhook_url": image.webhook_url,
        "job_timeout": image.timeout,
        **poll,
        **retry,
    }
    wait = {"timeout": image.timeout.total_seconds(), **poll, **retry}
    publish = {
        "image": image.name,
        "variant_labels": [v.label for v in image.variants],
        "submit_task_id": submit_task_id,
        "to": spec.publish.to,
        "filename": spec.publish.filename,
        "conn_id": spec.publish.conn_id,
        **retry,
    }
    overrides = [dict(v.flux) for v in image.variants] if image.variant_keys else None
    return ImageArgs(submit, wait, publish, overrides)


def _finalize_args(spec: Spec, publish_task_ids: list[str]) -> dict[str, Any]:
    return {
        "publish_task_ids": publish_task_ids,
        "expected_files": spec.job_count,
        "to": spec.publish.to,
        "conn_id": spec.publish.conn_id,
        "asset": spec.publish.asset,
        "manifest": spec.publish.manifest,
    }


def handwritten_source(specs: Sequence[Spec]) -> str:
    """One Python DAG file building every spec's DAG literally, as a team would write it by hand."""
    out = [
        '"""Image-refresh DAGs, written by hand (benchmark baseline). airflow DAG"""',
        "",
        "from datetime import UTC, datetime, timedelta",
        "",
        "from airflow.sdk import DAG, TaskGroup",
        "",
        "from flexflow.airflow.operators import FluxFlexOperator",
        "from flexflow.airflow.sensors import FluxJobSensor",
        "from flexflow.publishing.operators import FinalizeRunOperator, PublishImageOperator",
        "",
    ]
    for number, spec in enumerate(specs):
        out += ["", _call("", "with DAG", _dag_kwargs(spec)) + f" as dag_{number:04d}:"]
        publishes: list[str] = []
        for index, image in enumerate(spec.images):
            name = image.name
            args = image_args(spec, index, f"{name}.submit")
            out.append(f"    with TaskGroup({name!r}):")
            if args.overrides is not None:
                out.append(
                    _call("        ", f"{name}_submit = FluxFlexOperator.partial", {"task_id": "submit", **args.submit})
                    + f".expand(flux_overrides={_py(args.overrides)})"
                )
                out.append(
                    _call("        ", f"{name}_wait = FluxJobSensor.partial", {"task_id": "wait", **args.wait})
                    + f".expand(job_id={name}_submit.output)"
                )
                out.append(
                    _call(
                        "        ",
                        f"{name}_publish = PublishImageOperator.partial",
                        {"task_id": "publish", **args.publish},
                    )
                    + f".expand(job={name}_wait.output)"
                )
            else:
                out.append(_call("        ", f"{name}_submit = FluxFlexOperator", {"task_id": "submit", **args.submit}))
                out.append(
                    _call(
                        "        ",
                        f"{name}_wait = FluxJobSensor",
                        {"task_id": "wait", **args.wait},
                        {"job_id": f"{name}_submit.output"},
                    )
                )
                out.append(
                    _call(
                        "        ",
                        f"{name}_publish = PublishImageOperator",
                        {"task_id": "publish", **args.publish},
                        {"job": f"{name}_wait.output"},
                    )
                )
            publishes.append(name)
        finalize = _finalize_args(spec, [f"{name}.publish" for name in publishes])
        out.append(
            _call("    ", "FinalizeRunOperator", {"task_id": "finalize", **finalize})
            + ".set_upstream(["
            + ", ".join(f"{name}_publish" for name in publishes)
            + "])"
        )
    return "\n".join(out) + "\n"


# -- dag-factory YAML ----------------------------------------------------------------------------


def factory_task(image: str, step: str) -> str:
    """dag-factory keys tasks by name across the whole DAG and prefixes the group: ``hero.hero_submit``."""
    return f"{image}_{step}"


def _factory_value(value: Any) -> Any:
    """Plain YAML data; a timedelta as dag-factory's typed mapping (``__type__``)."""
    if isinstance(value, timedelta):
        return {"__type__": "datetime.timedelta", "seconds": value.total_seconds()}
    if isinstance(value, Mapping):
        return {k: _factory_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_factory_value(v) for v in value]
    return value


def factory_config(spec: Spec) -> dict[str, Any]:
    """dag-factory 1.1 config of one spec's DAG."""
    dag = _dag_kwargs(spec)
    config: dict[str, Any] = {
        "description": dag["description"],
        "doc_md": dag["doc_md"],
        "schedule": dag["schedule"],
        "catchup": dag["catchup"],
        "tags": dag["tags"],
        "params": dag["params"],
        "default_args": dag["default_args"],
        # An unmapped task gets the upstream result through a template; native rendering keeps it a dict.
        "render_template_as_native_obj": True,
    }
    if spec.start_date is not None:
        config["start_date"] = spec.start_date.isoformat()
    groups: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    publish_ids: list[str] = []
    publish_names: list[str] = []
    for index, image in enumerate(spec.images):
        name = image.name
        groups[name] = {"tooltip": f"image {name}"}
        submit, wait, publish = (factory_task(name, step) for step in ("submit", "wait", "publish"))
        args = image_args(spec, index, f"{name}.{submit}")
        common = {"task_group_name": name}
        if args.overrides is not None:
            tasks[submit] = {
                "operator": "flexflow.airflow.operators.FluxFlexOperator",
                **common,
                "partial": _factory_value(args.submit),
                "expand": {"flux_overrides": args.overrides},
            }
            tasks[wait] = {
                "operator": "flexflow.airflow.sensors.FluxJobSensor",
                **common,
                "partial": _factory_value(args.wait),
                "expand": {"job_id": f"{name}.{submit}.output"},
            }
            tasks[publish] = {
                "operator": "flexflow.publishing.operators.PublishImageOperator",
                **common,
                "partial": _factory_value(args.publish),
                "expand": {"job": f"{name}.{wait}.output"},
            }
        else:
            tasks[submit] = {
                "operator": "flexflow.airflow.operators.FluxFlexOperator",
                **common,
                **_factory_value(args.submit),
            }
            tasks[wait] = {
                "operator": "flexflow.airflow.sensors.FluxJobSensor",
                **common,
                "dependencies": [submit],
                "job_id": f"{{{{ ti.xcom_pull(task_ids='{name}.{submit}') }}}}",
                **_factory_value(args.wait),
            }
            tasks[publish] = {
                "operator": "flexflow.publishing.operators.PublishImageOperator",
                **common,
                "dependencies": [wait],
                "job": f"{{{{ ti.xcom_pull(task_ids='{name}.{wait}') }}}}",
                **_factory_value(args.publish),
            }
        publish_ids.append(f"{name}.{publish}")
        publish_names.append(publish)
    tasks["finalize"] = {
        "operator": "flexflow.publishing.operators.FinalizeRunOperator",
        "dependencies": publish_names,
        **_factory_value(_finalize_args(spec, publish_ids)),
    }
    config["task_groups"] = groups
    config["tasks"] = tasks
    return {spec.dag_id: config}


def write_factory_yaml(specs: Sequence[Spec], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, spec in enumerate(specs):
        text = yaml.safe_dump(factory_config(spec), sort_keys=False, allow_unicode=True, width=120)
        (folder / f"dag_{number:04d}.yaml").write_text(text, encoding="utf-8")


def factory_dag_file(yaml_folder: Path) -> str:
    return (
        '"""dag-factory 1.1 over the benchmark\'s YAML (airflow DAG)."""\n\n'
        "from dagfactory import load_yaml_dags\n\n"
        f"load_yaml_dags(globals_dict=globals(), dags_folder={str(yaml_folder)!r})\n"
    )


# -- one parse, in a fresh interpreter -------------------------------------------------------------

CHILD = r"""
import hashlib, importlib, importlib.machinery, importlib.util, json, sys, time
from datetime import timedelta

cfg = json.loads(open(sys.argv[1], encoding="utf-8").read())
SHARED
from airflow.sdk import DAG

profile = None
if cfg["profile"]:
    import cProfile
    profile = cProfile.Profile()
    profile.enable()
t0 = time.perf_counter()
for name in cfg["ops"]:
    importlib.import_module(name)
t1 = time.perf_counter()
for name in cfg["framework"]:
    importlib.import_module(name)
t2 = time.perf_counter()
path = cfg["file"]
mod_name = "unusual_prefix_" + hashlib.sha1(path.encode()).hexdigest() + "_" + path.rsplit("/", 1)[-1][:-3]
loader = importlib.machinery.SourceFileLoader(mod_name, path)
spec = importlib.util.spec_from_loader(mod_name, loader)
module = importlib.util.module_from_spec(spec)
sys.modules[mod_name] = module
loader.exec_module(module)
t3 = time.perf_counter()
if profile is not None:
    profile.disable()
    profile.dump_stats(cfg["profile"])
dags = {v.dag_id: v for v in vars(module).values() if isinstance(v, DAG)}

ARGS = (
    "prompt", "flux", "flux_overrides", "webhook_url", "apiframe_conn_id", "poll_interval", "job_timeout",
    "retries", "retry_delay", "timeout", "job_id", "job", "image", "variant_labels", "submit_task_id", "to",
    "filename", "conn_id", "publish_task_ids", "expected_files", "asset", "manifest", "trigger_rule", "owner",
)

def canon(value):
    if isinstance(value, timedelta):
        return "timedelta:%g" % value.total_seconds()
    if hasattr(value, "operator") and type(value).__name__.endswith("XComArg"):
        return "xcom:" + value.operator.task_id
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [canon(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    text = repr(value)
    return type(value).__name__ if " at 0x" in text else text

def task_sig(task):
    mapped = type(task).__name__ == "MappedOperator"
    if mapped:
        source = {**task.partial_kwargs, **task.expand_input.value}
        args = {k: canon(source[k]) for k in ARGS if k in source}
    else:
        args = {k: canon(getattr(task, k)) for k in ARGS if hasattr(task, k)}
    group = task.task_group.group_id if task.task_group is not None else None
    return {"class": task.task_type, "mapped": mapped, "group": group,
            "upstream": sorted(task.upstream_task_ids), "args": args}

def dag_sig(dag):
    start = dag.start_date.timestamp() if dag.start_date else None
    attrs = {"description": dag.description, "doc_md": dag.doc_md, "schedule": canon(dag.timetable),
             "start_date": start, "catchup": dag.catchup, "tags": sorted(dag.tags), "params": canon(dag.params.dump()),
             "owner": (dag.default_args or {}).get("owner"),
             "render_template_as_native_obj": dag.render_template_as_native_obj}
    return {"attrs": attrs, "tasks": {t.task_id: task_sig(t) for t in dag.tasks}}

result = {
    "ops": t1 - t0, "framework": t2 - t1, "file": t3 - t2, "total": t3 - t0,
    "dags": {dag_id: len(dag.tasks) for dag_id, dag in dags.items()},
}
if cfg["deep"]:
    result["deep"] = {dag_id: dag_sig(dag) for dag_id, dag in dags.items()}
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    json.dump(result, handle)
""".replace("SHARED", SHARED_IMPORTS)


@dataclass
class Variant:
    name: str
    file: Path
    framework: list[str]
    cache_dir: Path | None = None  # FLEXFLOW_CACHE_DIR; a fresh one per run when cold
    cold: bool = False
    times: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Bench:
    work: Path
    specs_dir: Path
    env: dict[str, str]

    def child_env(self, variant: Variant, cache_dir: Path | None, specs_dir: Path | None = None) -> dict[str, str]:
        env = dict(self.env)
        env["FLEXFLOW_SPECS_DIR"] = str(specs_dir or self.specs_dir)
        env["FLEXFLOW_CACHE_DIR"] = str(cache_dir or (self.work / "cache-unused"))
        return env

    def run(
        self,
        variant: Variant,
        *,
        deep: bool = False,
        profile: Path | None = None,
        specs_dir: Path | None = None,
        cache_dir: Path | None = None,
    ) -> dict[str, Any]:
        """One parse of the variant's DAG file in a fresh interpreter; timings in seconds, DAG ids, task counts."""
        if cache_dir is None:
            cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=self.work)) if variant.cold else variant.cache_dir
        config = {
            "file": str(variant.file),
            "ops": OPERATOR_MODULES,
            "framework": variant.framework,
            "deep": deep,
            "profile": str(profile) if profile else None,
        }
        cfg_path = self.work / "child.json"
        out_path = self.work / "child-result.json"
        cfg_path.write_text(json.dumps(config), encoding="utf-8")
        out_path.unlink(missing_ok=True)
        started = time.perf_counter()
        done = subprocess.run(
            [PYTHON, "-P", "-c", CHILD, str(cfg_path), str(out_path)],
            cwd=self.work,
            env=self.child_env(variant, cache_dir, specs_dir),
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0 or not out_path.exists():
            raise SystemExit(f"{variant.name}: the parse failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
        result["wall"] = wall
        result["cache_entries"] = len(list(cache_dir.glob("*.json"))) if cache_dir and cache_dir.exists() else 0
        if variant.cold and cache_dir != variant.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return result


# -- checking that the three build the same DAGs ---------------------------------------------------

_FACTORY_ID = re.compile(r"\b([a-z][a-z0-9_]*)\.\1_(submit|wait|publish)\b")


def _normalized(value: Any) -> Any:
    """dag-factory's ``hero.hero_submit`` read as ``hero.submit``, everywhere in a signature."""
    if isinstance(value, str):
        return _FACTORY_ID.sub(r"\1.\2", value)
    if isinstance(value, dict):
        return {_normalized(k): _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _structure(deep: Mapping[str, Any]) -> dict[str, Any]:
    return {
        dag_id: {
            task_id: (t["class"], t["mapped"], t["group"], tuple(t["upstream"])) for task_id, t in sig["tasks"].items()
        }
        for dag_id, sig in deep.items()
    }


def _differences(reference: Mapping[str, Any], other: Mapping[str, Any]) -> Counter[str]:
    """Per attribute (``dag.tags``, ``submit.flux``...): in how many DAGs ``other`` differs from ``reference``."""
    found: Counter[str] = Counter()
    for dag_id, ref in reference.items():
        sig = other.get(dag_id)
        if sig is None:
            continue
        seen: set[str] = set()
        for key in set(ref["attrs"]) | set(sig["attrs"]):
            if ref["attrs"].get(key) != sig["attrs"].get(key):
                seen.add(f"dag.{key}")
        for task_id, task in ref["tasks"].items():
            mine = sig["tasks"].get(task_id)
            if mine is None:
                continue
            kind = task_id.rsplit(".", 1)[-1]
            for key in set(task["args"]) | set(mine["args"]):
                if task["args"].get(key, "<absent>") != mine["args"].get(key, "<absent>"):
                    seen.add(f"{kind}.{key}")
        found.update(seen)
    return found


#: What dag-factory cannot express as flexflow does (printed with the check, never fatal).
FACTORY_EXPLAINED = {
    "dag.tags": "dag-factory adds its own tag 'dagfactory'",
    "dag.doc_md": "dag-factory appends the DAG's YAML to doc_md",
    "dag.render_template_as_native_obj": "set in the dag-factory YAML so unmapped tasks get the upstream dict "
    "through a template",
    "wait.job_id": "unmapped: a Jinja xcom_pull template + dependencies (dag-factory passes no XComArg to an "
    "operator argument); mapped: the same XComArg",
    "publish.job": "as wait.job_id",
}


def check(deep: Mapping[str, Mapping[str, Any]], expected: int) -> tuple[bool, list[str]]:
    """Same dag_ids, task counts and structure everywhere; hand-written == flexflow argument for argument."""
    lines: list[str] = []
    ok = True
    reference = deep[PLAIN]
    ids = {name: sorted(sig) for name, sig in deep.items()}
    counts = {name: {d: len(s["tasks"]) for d, s in sig.items()} for name, sig in deep.items()}
    for name in deep:
        same_ids = ids[name] == ids[PLAIN] and len(ids[name]) == expected
        same_counts = counts[name] == counts[PLAIN]
        ok &= same_ids and same_counts
        tasks = sum(counts[name].values())
        lines.append(
            f"check {name:<13} {len(ids[name])} DAGs ({'same' if same_ids else 'DIFFERENT'} dag_ids), {tasks} tasks "
            f"({'same' if same_counts else 'DIFFERENT'} count per DAG)"
        )
    hand, factory = deep[HAND], _normalized(deep[FACTORY])
    for name, sig in ((HAND, hand), (FACTORY, factory)):
        same = _structure(sig) == _structure(reference)
        ok &= same
        lines.append(
            f"check {name:<13} task ids, operators, mapping, groups and edges "
            f"{'identical to' if same else 'DIFFER from'} flexflow's"
            + (" (dag-factory ids 'img.img_submit' read as 'img.submit')" if name == FACTORY else "")
        )
    hand_diff = _differences(reference, hand)
    doc_only = set(hand_diff) <= {"dag.doc_md"}
    ok &= doc_only
    if not hand_diff:
        lines.append(f"check {HAND:<13} every DAG and task argument identical to flexflow's")
    else:
        lines.append(f"check {HAND:<13} arguments differ from flexflow's: {dict(hand_diff)}")
    factory_diff = _differences(reference, factory)
    lines.append(
        f"check {FACTORY:<13} arguments identical to flexflow's except (DAGs affected of {expected}):"
        if factory_diff
        else f"check {FACTORY:<13} every argument identical to flexflow's"
    )
    for key, count in sorted(factory_diff.items()):
        lines.append(f"      {key:<36} {count:>4}  {FACTORY_EXPLAINED.get(key, 'UNEXPLAINED difference')}")
    return ok, lines


# -- report ----------------------------------------------------------------------------------------


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _row(name: str, runs: Sequence[Mapping[str, Any]]) -> str:
    part = {key: _median(r[key] for r in runs) for key in ("ops", "framework", "file", "total", "wall")}
    return (
        f"{name:<22} {len(runs[0]['dags']):>5} {sum(runs[0]['dags'].values()):>6} "
        f"{part['ops']:>7.3f} {part['framework']:>9.3f} {part['file']:>7.3f} "
        f"{part['total']:>8.3f} {min(r['total'] for r in runs):>8.3f} {max(r['total'] for r in runs):>8.3f} "
        f"{part['wall']:>7.2f}"
    )


HEADER = (
    f"{'variant':<22} {'DAGs':>5} {'tasks':>6} {'ops':>7} {'framework':>9} {'file':>7} "
    f"{'total':>8} {'min':>8} {'max':>8} {'wall':>7}"
)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_profile(path: Path, title: str, top: int) -> None:
    print(f"\n-- cProfile: {title}, top {top} by cumulative time --")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)


def cache_supported() -> bool:
    """Whether flexflow has an on-disk spec cache (``FLEXFLOW_CACHE_DIR``); checked again by running it."""
    try:
        from flexflow.spec.cache import CACHE_DIR_ENV
    except ImportError:
        return False
    return CACHE_DIR_ENV == "FLEXFLOW_CACHE_DIR"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--specs", type=int, default=200, help="specs (DAGs) per variant (default 200)")
    parser.add_argument("--images", type=int, default=5, help="images per spec (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, variants interleaved (default 3)")
    parser.add_argument("--big", type=int, default=1000, help="specs for flexflow's big run; 0 skips it (1000)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of flexflow's parse (warm, cold)")
    parser.add_argument("--top", type=int, default=15, help="profile entries shown (default 15)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    if args.images > len(WORDS) or args.specs < 1 or args.rounds < 1:
        parser.error("need --specs >= 1, --rounds >= 1 and --images <= 20")

    work = Path(tempfile.mkdtemp(prefix="flexflow-parse-bench-"))
    try:
        return _run(args, work)
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    home, dags_dir = work / "airflow-home", work / "dags"
    home.mkdir()
    dags_dir.mkdir()
    # Bytecode is cached as in a default deployment, in a private tree so that no source folder is touched.
    skip = ("_AIRFLOW_PARSING_CONTEXT", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(
        PYTHONPYCACHEPREFIX=str(work / "pycache"),
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_dir),
        AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY="False",
        DO_NOT_TRACK="1",
    )
    specs_dir = work / "specs"
    started = time.perf_counter()
    generate_specs(specs_dir, args.specs, args.images, args.seed, SHAPE)
    specs = validated_specs(specs_dir)
    hand_file = dags_dir / "handwritten_dags.py"
    hand_file.write_text(handwritten_source(specs), encoding="utf-8")
    yaml_dir = work / "dagfactory-yaml"
    write_factory_yaml(specs, yaml_dir)
    factory_file = dags_dir / "dagfactory_dags.py"
    factory_file.write_text(factory_dag_file(yaml_dir), encoding="utf-8")
    jobs = sum(s.job_count for s in specs)
    mapped = sum(1 for s in specs for i in s.images if i.variant_keys)
    print(
        f"generated {len(specs)} specs x {args.images} images ({jobs} jobs, {mapped} images with variants) "
        f"in {time.perf_counter() - started:.1f}s; hand-written file {hand_file.stat().st_size / 1e6:.2f} MB, "
        f"dag-factory YAML {sum(p.stat().st_size for p in yaml_dir.iterdir()) / 1e6:.2f} MB, "
        f"specs {sum(p.stat().st_size for p in specs_dir.iterdir()) / 1e6:.2f} MB"
    )

    print(f"load average before: {_load()} (2 cores: above 2, other processes compete for the CPU)")
    bench = Bench(work, specs_dir, env)
    has_cache = cache_supported()
    warm_dir = work / "cache-warm"
    hand = Variant(HAND, hand_file, [])
    factory = Variant(FACTORY, factory_file, ["dagfactory"])
    warm = Variant(WARM if has_cache else PLAIN, FLEXFLOW_DAG_FILE, ["flexflow.compiler.loader"], cache_dir=warm_dir)
    cold = Variant(COLD, FLEXFLOW_DAG_FILE, ["flexflow.compiler.loader"], cold=True)

    # Untimed first round: .pyc files, the warm cache, and the equivalence check.
    first: dict[str, dict[str, Any]] = {}
    for variant in (hand, factory, warm):
        first[PLAIN if variant is warm else variant.name] = bench.run(variant, deep=True)
    if has_cache and first[PLAIN]["cache_entries"] == 0:
        print(f"note: {FLEXFLOW_DAG_FILE.name} wrote nothing to FLEXFLOW_CACHE_DIR: no cache in use, cold == warm")
        has_cache = False
        warm.name = PLAIN
    variants = [hand, factory, warm, cold] if has_cache else [hand, factory, warm]
    deep = {name: result.pop("deep") for name, result in first.items()}
    ok, lines = check(deep, len(specs))
    print("\n".join(lines))
    print(
        "first parse (untimed round: .pyc compiled, cache cold): "
        + ", ".join(f"{name} {result['total']:.2f}s" for name, result in first.items())
    )

    for number in range(args.rounds):
        for variant in variants:
            result = bench.run(variant)
            if result["dags"] != first[PLAIN]["dags"]:
                ok = False
                print(f"check FAILED: {variant.name} in round {number + 1} built other DAGs than the first round")
            variant.times.append(result)
        print(
            f"round {number + 1}/{args.rounds}: "
            + ", ".join(f"{v.name} {v.times[-1]['total']:.2f}s" for v in variants),
            flush=True,
        )

    print(
        f"\n{len(specs)} specs x {args.images} images, {args.rounds} rounds interleaved; seconds; "
        "ops/framework/file/total are medians, min is the fastest total, wall = whole child process"
    )
    print(HEADER)
    for variant in variants:
        print(_row(variant.name, variant.times))

    def total(variant: Variant) -> float:
        return _median(r["total"] for r in variant.times)

    def best(variant: Variant) -> float:
        return min(r["total"] for r in variant.times)

    judged = warm
    vs_hand = total(judged) / total(hand)
    vs_factory = total(factory) / total(judged)
    print(f"\nratios of the median totals (targets judged on {judged.name}); of the min totals in brackets:")
    print(
        f"  {judged.name} / {HAND}: {vs_hand:.2f} ({best(judged) / best(hand):.2f})  target <= {TARGET_VS_HANDWRITTEN}"
    )
    print(
        f"  {FACTORY} / {judged.name}: {vs_factory:.2f} ({best(factory) / best(judged):.2f})  "
        f"target >= {TARGET_VS_DAGFACTORY:g}"
    )
    if has_cache:
        print(f"  {COLD} / {HAND}: {total(cold) / total(hand):.2f} ({best(cold) / best(hand):.2f})  information")
        print(
            f"  {FACTORY} / {COLD}: {total(factory) / total(cold):.2f} ({best(factory) / best(cold):.2f})  information"
        )
    lib_ff = _median(r["framework"] for r in warm.times)
    lib_df = _median(r["framework"] for r in factory.times)
    print(
        f"library imports (median, after airflow.sdk and the operator modules): flexflow.compiler.loader "
        f"{lib_ff * 1000:.0f} ms, dagfactory {lib_df * 1000:.0f} ms; operator modules "
        f"{_median(r['ops'] for r in hand.times) * 1000:.0f} ms"
    )

    verdicts = {
        "equivalence": ok,
        "vs_handwritten": vs_hand <= TARGET_VS_HANDWRITTEN,
        "vs_dagfactory": vs_factory >= TARGET_VS_DAGFACTORY,
    }
    big: dict[str, Any] = {}
    if args.big:
        big = _big_run(args, bench, warm, cold, has_cache)
        verdicts["big"] = big["judged"] < TARGET_BIG_SECONDS

    print(f"\nload average after: {_load()}")
    print(f"{_verdict(verdicts['equivalence'])}  same DAGs from all three ({len(specs)} dag_ids, tasks per DAG)")
    print(
        f"{_verdict(verdicts['vs_handwritten'])}  {judged.name} within {TARGET_VS_HANDWRITTEN}x of hand-written: "
        f"{vs_hand:.2f}x"
    )
    print(
        f"{_verdict(verdicts['vs_dagfactory'])}  dag-factory at least {TARGET_VS_DAGFACTORY:g}x slower than "
        f"{judged.name}: {vs_factory:.2f}x"
    )
    if big:
        print(
            f"{_verdict(verdicts['big'])}  {args.big} specs in under {TARGET_BIG_SECONDS:g}s ({big['judged_name']}): "
            f"{big['judged']:.2f}s"
        )

    if args.profile or not verdicts["vs_handwritten"]:
        for variant in [warm, cold] if has_cache else [warm]:
            path = work / f"profile-{'cold' if variant.cold else 'warm'}.pstats"
            bench.run(variant, profile=path)
            print_profile(
                path, f"{variant.name}, {len(specs)} specs (operator + loader imports and the DAG file)", args.top
            )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "specs": len(specs),
            "images": args.images,
            "rounds": args.rounds,
            "seed": args.seed,
            "cache": has_cache,
            "first_parse": {name: {k: v for k, v in r.items() if k != "dags"} for name, r in first.items()},
            "runs": {v.name: [{k: x for k, x in r.items() if k != "dags"} for r in v.times] for v in variants},
            "median_total": {v.name: total(v) for v in variants},
            "ratios": {"flexflow_over_handwritten": vs_hand, "dagfactory_over_flexflow": vs_factory},
            "big": big,
            "verdicts": verdicts,
            "check": lines,
        }
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0 if all(verdicts.values()) else 1


def _big_run(args: argparse.Namespace, bench: Bench, warm: Variant, cold: Variant, has_cache: bool) -> dict[str, Any]:
    """flexflow's loader alone on ``--big`` specs, each parse a fresh process: cold cache once, then warm."""
    folder = bench.work / "specs-big"
    generate_specs(folder, args.big, args.images, args.seed + 1, SHAPE)
    cache_dir = bench.work / "cache-big"
    big_cold = Variant(cold.name, warm.file, warm.framework, cache_dir=cache_dir)
    big_warm = Variant(warm.name, warm.file, warm.framework, cache_dir=cache_dir)
    print(f"\n{args.big} specs x {args.images} images, flexflow only (fresh process per parse):")
    print(HEADER)
    first = bench.run(big_cold, specs_dir=folder, cache_dir=cache_dir)  # primes the cache when there is one
    if len(first["dags"]) != args.big:
        raise SystemExit(f"the big run built {len(first['dags'])} DAGs, not {args.big}")
    runs = [bench.run(big_warm, specs_dir=folder) for _ in range(args.rounds)]
    if has_cache:
        print(_row(f"{COLD}", [first]))
    print(_row(big_warm.name, runs))
    judged = _median(r["total"] for r in runs)
    return {
        "specs": args.big,
        "cold": {k: v for k, v in first.items() if k != "dags"},
        "warm": [{k: v for k, v in r.items() if k != "dags"} for r in runs],
        "judged": judged,
        "judged_name": big_warm.name,
    }


if __name__ == "__main__":
    sys.exit(main())
