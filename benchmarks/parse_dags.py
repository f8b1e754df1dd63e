"""Parse benchmark: flexflow's DAG-folder loader against a hand-written DAG file and dag-factory 1.1.

What runs
    ``--specs`` valid specs (default 200) of ``--images`` images each (default 5) are generated into a
    temporary folder from a fixed seed: realistic specs (cron, preset and manual schedules, defaults,
    params, per-image flux settings, about a third of the images with variants of one or two keys).
    From the same specs (as flexflow validates them, every default applied) two baselines are written,
    both from each spec's ``task_layout`` (what ``flexflow plan`` shows and the compiler interprets):
    the operators, their arguments and edges come from there, so the task graph is described once.

    hand-written  one Python DAG file that builds the same DAGs literally: ``with DAG(...)``, per
                  image a ``TaskGroup`` of ``FluxFlexOperator`` -> ``FluxJobSensor`` ->
                  ``PublishImageOperator`` with the layout's arguments (upstream XComs as
                  ``op.output`` / ``XComArg(op, key="request")``); an image with variants as a
                  ``@task_group`` function of ``variant, flux_overrides`` mapped with
                  ``.expand_kwargs([...])`` over the variant records; then ``FinalizeRunOperator``.
                  No YAML, no validation.
    dag-factory   dag-factory 1.1 YAML, one file per spec, the same operator classes by import path
                  with the same arguments (timedeltas as ``__type__: datetime.timedelta``), loaded by a
                  DAG file calling ``dagfactory.load_yaml_dags(globals_dict=globals(), dags_folder=...)``.
                  dag-factory 1.1 cannot build flexflow's DAG exactly, and the check says where:
                  - no mapped task groups (its ``task_groups`` are plain ``TaskGroup``s; it has no
                    ``expand_kwargs``): the tasks of an image with variants are each mapped on their
                    own, ``partial``/``expand`` over one argument (the submit over the variants' flux
                    overrides, the wait and the publish over ``<upstream>.output``), so at run time a
                    failed variant holds back its siblings' publish;
                  - no XComArg in an operator argument, and ``.output`` is the return value only: other
                    upstream results are Jinja ``xcom_pull`` templates (``key='request'``;
                    ``map_indexes=ti.map_index`` when mapped), rendered as native objects
                    (``render_template_as_native_obj``), and a mapped task's variant label a template
                    indexing the labels by ``ti.map_index`` (expanding two arguments is a cross product);
                  - task ids ``hero.hero_submit`` (it keys tasks by name across the DAG), its own tag
                    ``dagfactory`` and the YAML appended to ``doc_md``.
    flexflow      the project's own DAG file ``dags/flexflow_dags.py`` (the one DAG-file stub,
                  ``dag_file_source``'s text), pointed at the specs with ``FLEXFLOW_SPECS_DIR``; with
                  its on-disk spec cache (``FLEXFLOW_CACHE_DIR``) warm (a cache folder primed by an
                  earlier parse) and cold (a fresh, empty cache folder).

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
    (exit 1 if not): the hand-written DAGs must equal flexflow's in every task id, operator, group,
    edge, mapping (plain operators in a mapped task group) and argument (a mapped argument compares
    as the values of its instances, however it is mapped); dag-factory's in task ids, operators,
    groups, edges and which tasks are mapped, with only the differences listed above. Then
    ``--rounds`` rounds, each variant once per round, interleaved, for a noisy 2-core machine; the
    median and min are shown.

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
from typing import TYPE_CHECKING, Any

import yaml
from common import ROOT, WORDS, SpecShape, generate_specs

sys.path.insert(0, str(ROOT))

from flexflow.compiler.dag import OPERATORS
from flexflow.compiler.layout import FromTask, FromVariant, Layout, PlannedGroup, PlannedTask, task_layout
from flexflow.spec.folder import load_folder
from flexflow.spec.model import Spec
from flexflow.spec.templates import TEMPLATE_FILTERS

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

PYTHON = sys.executable
#: flexflow's DAG file as shipped: the one DAG-file stub (``dag_file_source``'s text, which the tests hold it to).
FLEXFLOW_DAG_FILE = ROOT / "dags" / "flexflow_dags.py"

TARGET_VS_HANDWRITTEN = 1.25
TARGET_VS_DAGFACTORY = 3.0
TARGET_BIG_SECONDS = 10.0

SHARED_IMPORTS = "import airflow.sdk\nfrom airflow.sdk import DAG, BaseOperator, BaseSensorOperator, TaskGroup"
#: Imported on the clock before the framework: the modules of the compiler's operator classes.
OPERATOR_MODULES = sorted({cls.__module__ for cls in OPERATORS.values()})

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


# -- the task graph, from flexflow's layout ------------------------------------------------------

#: The XCom key of a task's result: what ``op.output`` (and dag-factory's ``<task id>.output``) reads.
RETURN_VALUE = "return_value"
#: Arguments compared besides the layout's own (set from ``default_args`` or by Airflow).
EXTRA_ARGS = ("trigger_rule", "owner")
#: A group's variant records (``PlannedGroup.variants``); None when the group is not mapped.
Variants = tuple[Mapping[str, Any], ...] | None


def layouts(specs: Sequence[Spec]) -> list[Layout]:
    """Each spec's ``task_layout``, the one description of its task graph: the baselines are written from it."""
    return [task_layout(spec) for spec in specs]


def compared_args(plans: Sequence[Layout]) -> list[str]:
    """Every constructor argument the layouts pass, which the equivalence check compares task by task."""
    return sorted({name for plan in plans for task in plan.tasks for name in task.arguments} | set(EXTRA_ARGS))


def operator_class(name: str) -> type[BaseOperator]:
    """The class behind a layout's operator name, from the compiler's own table."""
    return OPERATORS[name]


def operator_path(name: str) -> str:
    cls = operator_class(name)
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the hand-written DAG file -------------------------------------------------------------------


def _py(value: Any) -> str:
    """A Python literal, as someone would type it."""
    if value is TEMPLATE_FILTERS:  # the DAG's template filters: a hand-written file imports them too
        return "TEMPLATE_FILTERS"
    if isinstance(value, timedelta):
        return f"timedelta(seconds={value.total_seconds():g})"
    if isinstance(value, datetime):
        return f"datetime({value.year}, {value.month}, {value.day}, {value.hour}, {value.minute}, tzinfo=UTC)"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    if value is None or isinstance(value, str | int | float | bool):
        return repr(value)
    # A new kind of layout value (a run-time input nested in a literal, say) must not become a repr.
    raise TypeError(f"no Python literal for {value!r}")


def _call(indent: str, head: str, arguments: Mapping[str, str]) -> str:
    """``head(`` with one ``key=code,`` line per argument (values are Python code already)."""
    lines = [f"{indent}{head}("]
    lines += [f"{indent}    {key}={code}," for key, code in arguments.items()]
    return "\n".join(lines) + f"\n{indent})"


def _identifier(task_id: str) -> str:
    """The Python variable of a task: ``hero.submit`` -> ``hero_submit``."""
    return re.sub(r"\W", "_", task_id)


def _py_argument(value: Any, variables: Mapping[str, str]) -> str:
    """An argument as Python: an upstream XCom through its task's variable, a variant field by its parameter."""
    if isinstance(value, FromTask):
        upstream = variables[value.task_id]
        return f"{upstream}.output" if value.key == RETURN_VALUE else f"XComArg({upstream}, key={value.key!r})"
    if isinstance(value, FromVariant):
        return value.field  # the group function's parameter of that name
    return _py(value)


def _py_task(indent: str, task: PlannedTask, variables: dict[str, str]) -> list[str]:
    """``<variable> = Operator(task_id=..., ...)``, plus the layout's edges that no XCom argument implies."""
    variable = variables[task.task_id] = _identifier(task.task_id)
    code = {"task_id": repr(task.step)} | {k: _py_argument(v, variables) for k, v in task.arguments.items()}
    lines = [_call(indent, f"{variable} = {task.operator}", code)]
    implied = {v.task_id for v in task.arguments.values() if isinstance(v, FromTask)}
    if extra := [variables[u] for u in task.upstream if u not in implied]:
        lines.append(f"{indent}{variable}.set_upstream([{', '.join(extra)}])")
    return lines


def _py_group(group: PlannedGroup, variables: dict[str, str]) -> list[str]:
    """A ``TaskGroup``; with variants a ``@task_group`` function over a variant record, ``expand_kwargs`` over them.

    The function returns its last task, so the group's result is bound to that task for later edges
    (Airflow's task-group decorator forwards a returned task); the layout's finalize depends only on it.
    """
    if group.variants is None:
        lines = [f"    with TaskGroup({group.group_id!r}):"]
        for task in group.tasks:
            lines += _py_task("        ", task, variables)
        return lines
    fields = list(group.variants[0])
    if not all(field.isidentifier() for field in fields):
        raise ValueError(f"variant fields {fields} are not Python parameter names")
    function = _identifier(group.group_id) + "_variants"
    lines = [f"    @task_group(group_id={group.group_id!r})", f"    def {function}({', '.join(fields)}):"]
    for task in group.tasks:
        lines += _py_task("        ", task, variables)
    last = group.tasks[-1].task_id
    lines.append(f"        return {variables[last]}")
    lines.append("")
    lines.append(f"    {variables[last]} = {function}.expand_kwargs({_py([dict(r) for r in group.variants])})")
    # Only the returned task exists outside the function: drop the others, so a later reference fails loudly.
    for task in group.tasks[:-1]:
        del variables[task.task_id]
    return lines


def handwritten_source(specs: Sequence[Spec], plans: Sequence[Layout]) -> str:
    """One Python DAG file building every spec's DAG literally from its layout, as a team would write it by hand."""
    modules: dict[str, set[str]] = {}
    for name in {task.operator for plan in plans for task in plan.tasks}:
        modules.setdefault(operator_class(name).__module__, set()).add(name)
    out = [
        '"""Image-refresh DAGs, written by hand (benchmark baseline). airflow DAG"""',
        "",
        "from datetime import UTC, datetime, timedelta",
        "",
        "from airflow.sdk import DAG, TaskGroup, task_group",
        "from airflow.sdk.definitions.xcom_arg import XComArg",
        "",
        "from flexflow.spec.templates import TEMPLATE_FILTERS",
        *(f"from {module} import {', '.join(sorted(names))}" for module, names in sorted(modules.items())),
        "",
    ]
    for number, (spec, plan) in enumerate(zip(specs, plans, strict=True)):
        dag = {key: _py(value) for key, value in task_layout(spec).dag_arguments.items()}
        out += ["", _call("", "with DAG", dag) + f" as dag_{number:04d}:"]
        variables: dict[str, str] = {}
        out += _py_task("    ", plan.prepare, variables)
        for group in plan.groups:
            out += _py_group(group, variables)
        out += _py_task("    ", plan.finalize, variables)
    return "\n".join(out) + "\n"


# -- dag-factory YAML ----------------------------------------------------------------------------


def factory_name(task: PlannedTask) -> str:
    """dag-factory keys tasks by name across the whole DAG and prefixes the group: ``hero.hero_submit``."""
    return f"{task.image}_{task.step}" if task.image else task.task_id


def factory_id(task: PlannedTask) -> str:
    return f"{task.image}.{factory_name(task)}" if task.image else factory_name(task)


def _factory_value(value: Any, ids: Mapping[str, str]) -> Any:
    """Plain YAML data; a timedelta as dag-factory's typed mapping (``__type__``), a task id as dag-factory's."""
    if isinstance(value, timedelta):
        return {"__type__": "datetime.timedelta", "seconds": value.total_seconds()}
    if isinstance(value, Mapping):
        return {k: _factory_value(v, ids) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_factory_value(v, ids) for v in value]
    if isinstance(value, str):
        return ids.get(value, value)  # finalize's publish_task_ids name tasks by id
    if value is None or isinstance(value, int | float | bool):
        return value
    raise TypeError(f"no YAML value for {value!r}")


def _mapped_over(task: PlannedTask) -> str:
    """The one argument a mapped task expands over (dag-factory's ``expand`` of two is their cross product).

    An upstream result if there is one (``<task id>.output``, one instance per upstream instance),
    else a field of the variant records (a literal list).
    """
    results = [
        name for name, value in task.arguments.items() if isinstance(value, FromTask) and value.key == RETURN_VALUE
    ]
    fields = [name for name, value in task.arguments.items() if isinstance(value, FromVariant)]
    if results or fields:
        return (results or fields)[0]
    raise ValueError(f"{task.task_id}: a task of a mapped group with no run-time argument to map over")


def _factory_template(
    task: PlannedTask, name: str, value: FromTask | FromVariant, ids: Mapping[str, str], variants: Variants
) -> str:
    """A run-time argument dag-factory cannot pass as flexflow does, as a Jinja template of the task.

    In a mapped group it is the instance's own: the upstream instance's XCom (``map_indexes``), the
    variant record's field (the field's values indexed by ``ti.map_index``).
    """
    if name not in operator_class(task.operator).template_fields:
        raise ValueError(f"{task.task_id}.{name} is no template field: dag-factory cannot fill it at run time")
    if isinstance(value, FromVariant):
        if variants is None:
            raise ValueError(f"{task.task_id}: a variant field outside a mapped group")
        return f"{{{{ {[record[value.field] for record in variants]!r}[ti.map_index] }}}}"
    # A mapped instance reads its own upstream instance; a task outside the group (prepare) has one.
    same_group = variants is not None and value.task_id.startswith(f"{task.image}.")
    index = ", map_indexes=ti.map_index" if same_group else ""
    return f"{{{{ ti.xcom_pull(task_ids='{ids[value.task_id]}', key='{value.key}'{index}) }}}}"


def _factory_task(
    task: PlannedTask, group: str | None, variants: Variants, ids: Mapping[str, str], names: Mapping[str, str]
) -> dict[str, Any]:
    """One task of dag-factory's ``tasks``: the layout's operator and arguments in dag-factory's constructs."""
    entry: dict[str, Any] = {"operator": operator_path(task.operator)}
    if group is not None:
        entry["task_group_name"] = group
    if task.upstream:  # also orders dag-factory's task creation, which an ``expand`` over ``.output`` needs
        entry["dependencies"] = [names[u] for u in task.upstream]
    expanded = _mapped_over(task) if variants is not None else None
    plain: dict[str, Any] = {}
    for name, value in task.arguments.items():
        if name == expanded and isinstance(value, FromTask):
            entry["expand"] = {name: f"{ids[value.task_id]}.output"}
        elif name == expanded and isinstance(value, FromVariant):
            entry["expand"] = {name: [_factory_value(record[value.field], ids) for record in variants or ()]}
        elif isinstance(value, FromTask | FromVariant):
            plain[name] = _factory_template(task, name, value, ids, variants)
        else:
            plain[name] = _factory_value(value, ids)
    if expanded is None:
        entry.update(plain)
    else:
        entry["partial"] = plain
    return entry


def factory_config(spec: Spec, plan: Layout) -> dict[str, Any]:
    """dag-factory 1.1 config of one spec's DAG, from its layout.

    An image group without variants is a ``task_groups`` entry with its three tasks, upstream results
    passed by Jinja ``xcom_pull`` templates (dag-factory hands an operator argument no XComArg). An
    image group with variants cannot be a mapped task group (dag-factory's task groups are plain
    ``TaskGroup``s, and it has no ``expand_kwargs``): its tasks are mapped one by one (``partial`` /
    ``expand``) over one argument each, the others templated per ``ti.map_index``.
    """
    dag = task_layout(spec).dag_arguments
    config: dict[str, Any] = {
        "description": dag["description"],
        "doc_md": dag["doc_md"],
        "schedule": dag["schedule"],
        "catchup": dag["catchup"],
        "tags": dag["tags"],
        "params": dag["params"],
        "default_args": dag["default_args"],
        # Templated upstream results stay dicts (the job outcome, the request) with native rendering.
        "render_template_as_native_obj": True,
    }
    if spec.start_date is not None:
        config["start_date"] = spec.start_date.isoformat()
    ids = {task.task_id: factory_id(task) for task in plan.tasks}
    names = {task.task_id: factory_name(task) for task in plan.tasks}
    tasks: dict[str, Any] = {names[plan.prepare.task_id]: _factory_task(plan.prepare, None, None, ids, names)}
    for group in plan.groups:
        for task in group.tasks:
            tasks[names[task.task_id]] = _factory_task(task, group.group_id, group.variants, ids, names)
    tasks[names[plan.finalize.task_id]] = _factory_task(plan.finalize, None, None, ids, names)
    config["task_groups"] = {group.group_id: {} for group in plan.groups}
    config["tasks"] = tasks
    return {spec.dag_id: config}


def write_factory_yaml(specs: Sequence[Spec], plans: Sequence[Layout], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, (spec, plan) in enumerate(zip(specs, plans, strict=True)):
        text = yaml.safe_dump(factory_config(spec, plan), sort_keys=False, allow_unicode=True, width=120)
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

ARGS = cfg["args"]  # every argument the layouts pass, and a few Airflow sets

def per_variant(values):
    # A mapped argument as the values of its instances: comparable however the mapping is written.
    return {"per_variant": [canon(v) for v in values]}

def canon(value):
    if isinstance(value, timedelta):
        return "timedelta:%g" % value.total_seconds()
    if hasattr(value, "operator") and type(value).__name__.endswith("XComArg"):
        key = getattr(value, "key", "return_value")
        return "xcom:" + value.operator.task_id + ("" if key == "return_value" else "[%s]" % key)
    if type(value).__name__ == "MappedArgument":  # a field of the mapped task group's records
        records = value._input.value
        if isinstance(records, (list, tuple)):
            return per_variant([record[value._key] for record in records])
        if isinstance(records, dict) and isinstance(records.get(value._key), (list, tuple)):
            return per_variant(records[value._key])
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [canon(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    text = repr(value)
    return type(value).__name__ if " at 0x" in text else text

def task_sig(task):
    # "task": a mapped operator (.partial().expand()); "group": a plain operator in a mapped task group.
    if type(task).__name__ == "MappedOperator":
        mapped = "task"
        args = {k: canon(v) for k, v in task.partial_kwargs.items() if k in ARGS}
        for k, v in task.expand_input.value.items():
            if k in ARGS:
                args[k] = per_variant(v) if isinstance(v, (list, tuple)) else canon(v)
    else:
        mapped = "group" if task.get_closest_mapped_task_group() is not None else None
        args = {k: canon(getattr(task, k)) for k in ARGS if hasattr(task, k)}
    group = task.task_group.group_id if task.task_group is not None else None
    return {"class": task.task_type, "mapped": mapped, "group": group,
            "upstream": sorted(task.upstream_task_ids), "args": dict(sorted(args.items()))}

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
    args: list[str]  # the task arguments the equivalence check compares

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
            "args": self.args,
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
        if variant.cold and cache_dir is not None and cache_dir != variant.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return result


# -- checking that the three build the same DAGs ---------------------------------------------------

#: dag-factory's ``hero.hero_submit`` (group prefix, then the task's name, see ``factory_name``).
_FACTORY_ID = re.compile(r"\b([a-z][a-z0-9_]*)\.\1_([a-z][a-z0-9_]*)\b")


def _normalized(value: Any) -> Any:
    """dag-factory's ``hero.hero_submit`` read as ``hero.submit``, everywhere in a signature."""
    if isinstance(value, str):
        return _FACTORY_ID.sub(r"\1.\2", value)
    if isinstance(value, dict):
        return {_normalized(k): _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _structure(deep: Mapping[str, Any], *, how_mapped: bool = True) -> dict[str, Any]:
    """Per task: operator, mapping, group, upstream; ``how_mapped=False`` compares only whether it is mapped."""
    return {
        dag_id: {
            task_id: (t["class"], t["mapped"] if how_mapped else bool(t["mapped"]), t["group"], tuple(t["upstream"]))
            for task_id, t in sig["tasks"].items()
        }
        for dag_id, sig in deep.items()
    }


def _mapping_differences(reference: Mapping[str, Any], other: Mapping[str, Any]) -> Counter[tuple[str, str]]:
    """How many tasks are mapped otherwise: (flexflow's way, the other's way), e.g. ("group", "task")."""
    found: Counter[tuple[str, str]] = Counter()
    for dag_id, ref in reference.items():
        tasks = other.get(dag_id, {}).get("tasks", {})
        for task_id, task in ref["tasks"].items():
            mine = tasks.get(task_id)
            if mine is not None and mine["mapped"] != task["mapped"]:
                found[(str(task["mapped"]), str(mine["mapped"]))] += 1
    return found


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


#: How dag-factory maps the tasks of an image with variants (printed with the check; any other way fails it).
FACTORY_MAPPING = ("group", "task")
FACTORY_MAPPING_EXPLAINED = (
    "dag-factory 1.1 has no mapped task groups (its task_groups are plain TaskGroups, no expand_kwargs): each task "
    "of a variant group is mapped on its own (.partial().expand() over one argument) where flexflow maps the group "
    "over the variant records; at run time a failed variant then holds back its siblings' publish"
)
#: What dag-factory cannot express as flexflow does (printed with the check; an unexplained difference fails it).
FACTORY_EXPLAINED = {
    "dag.tags": "dag-factory adds its own tag 'dagfactory'",
    "dag.doc_md": "dag-factory appends the DAG's YAML to doc_md",
    "dag.render_template_as_native_obj": "set in the dag-factory YAML so templated upstream results (job outcome, "
    "request) render as dicts",
    "wait.job_id": "unmapped: a Jinja xcom_pull template (dag-factory passes no XComArg to an operator argument); "
    "mapped: expand over '<submit>.output', the same XComArg",
    "publish.job": "as wait.job_id (mapped: expand over '<wait>.output')",
    "publish.request": "the submit's XCom under key 'request': dag-factory's '.output' is return_value only, so a "
    "Jinja xcom_pull(key='request') template (mapped: map_indexes=ti.map_index)",
    "publish.target": "the prepare task's result (the run's folder and file names): a Jinja xcom_pull template "
    "(dag-factory passes no XComArg to an operator argument)",
    "finalize.target": "as publish.target",
    "publish.variant": "the variant record's label: a task maps over one argument (two are a cross product), so a "
    "Jinja template indexing the labels by ti.map_index",
}


def check(deep: Mapping[str, Mapping[str, Any]], expected: int) -> tuple[bool, list[str]]:
    """Same dag_ids, task counts and structure everywhere; hand-written == flexflow argument for argument.

    The hand-written file must build flexflow's DAGs exactly, mapped task groups included (a mapped
    argument compares as the values of its instances). dag-factory must build the same tasks, groups and
    edges, map the same tasks (its own way, ``FACTORY_MAPPING``) and differ in arguments only as explained.
    """
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
    same = _structure(hand) == _structure(reference)
    ok &= same
    lines.append(
        f"check {HAND:<13} task ids, operators, mapping (mapped task groups), groups and edges "
        f"{'identical to' if same else 'DIFFER from'} flexflow's"
    )
    same = _structure(factory, how_mapped=False) == _structure(reference, how_mapped=False)
    ok &= same
    lines.append(
        f"check {FACTORY:<13} task ids, operators, mapped or not, groups and edges "
        f"{'identical to' if same else 'DIFFER from'} flexflow's"
        " (dag-factory ids 'img.img_submit' read as 'img.submit')"
    )
    for (theirs, mine), count in sorted(_mapping_differences(reference, factory).items()):
        explained = (theirs, mine) == FACTORY_MAPPING
        ok &= explained
        lines.append(
            f"check {FACTORY:<13} {count} tasks mapped per {mine} where flexflow's are mapped per {theirs}: "
            + (FACTORY_MAPPING_EXPLAINED if explained else "UNEXPLAINED difference")
        )
    hand_diff = _differences(reference, hand)
    doc_only = set(hand_diff) <= {"dag.doc_md"}
    ok &= doc_only
    if not hand_diff:
        lines.append(f"check {HAND:<13} every DAG and task argument identical to flexflow's")
    else:
        lines.append(f"check {HAND:<13} arguments differ from flexflow's: {dict(hand_diff)}")
    factory_diff = _differences(reference, factory)
    ok &= set(factory_diff) <= set(FACTORY_EXPLAINED)
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
    plans = layouts(specs)
    hand_file = dags_dir / "handwritten_dags.py"
    hand_file.write_text(handwritten_source(specs, plans), encoding="utf-8")
    yaml_dir = work / "dagfactory-yaml"
    write_factory_yaml(specs, plans, yaml_dir)
    factory_file = dags_dir / "dagfactory_dags.py"
    factory_file.write_text(factory_dag_file(yaml_dir), encoding="utf-8")
    flexflow_file = FLEXFLOW_DAG_FILE  # FLEXFLOW_SPECS_DIR points each parse at its specs
    jobs = sum(s.job_count for s in specs)
    mapped = sum(1 for s in specs for i in s.images if i.variant_keys)
    print(
        f"generated {len(specs)} specs x {args.images} images ({jobs} jobs, {mapped} images with variants) "
        f"in {time.perf_counter() - started:.1f}s; hand-written file {hand_file.stat().st_size / 1e6:.2f} MB, "
        f"dag-factory YAML {sum(p.stat().st_size for p in yaml_dir.iterdir()) / 1e6:.2f} MB, "
        f"specs {sum(p.stat().st_size for p in specs_dir.iterdir()) / 1e6:.2f} MB"
    )

    print(f"load average before: {_load()} (2 cores: above 2, other processes compete for the CPU)")
    bench = Bench(work, specs_dir, env, compared_args(plans))
    has_cache = cache_supported()
    warm_dir = work / "cache-warm"
    hand = Variant(HAND, hand_file, [])
    factory = Variant(FACTORY, factory_file, ["dagfactory"])
    warm = Variant(WARM if has_cache else PLAIN, flexflow_file, ["flexflow.compiler.loader"], cache_dir=warm_dir)
    cold = Variant(COLD, flexflow_file, ["flexflow.compiler.loader"], cold=True)

    # Untimed first round: .pyc files, the warm cache, and the equivalence check.
    first: dict[str, dict[str, Any]] = {}
    for variant in (hand, factory, warm):
        first[PLAIN if variant is warm else variant.name] = bench.run(variant, deep=True)
    if has_cache and first[PLAIN]["cache_entries"] == 0:
        print(f"note: {flexflow_file.name} wrote nothing to FLEXFLOW_CACHE_DIR: no cache in use, cold == warm")
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
