"""The hostile corpus: specs written by a careless or hostile author, each contained (issue 11).

Every file under ``tests/specs/hostile/`` is named ``<class>__<variation>.yaml`` (the attack class
first: ``template``, ``publish``, ``airflow``, ``bounded``, ``secret``, ``escape``) and states in its
header exactly what validation reports, one line per problem, the whole message::

    # expect: <line>:<column>: <message>

Loaded together with valid specs through the DAG loader by Airflow's own ``DagBag``, every valid spec
is a working DAG, every hostile one its own flagged DAG, and nothing is an import error.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from flexflow.compiler.dag import INVALID_TAG
from flexflow.compiler.dag_file import DAG_FILE_NAME, SPECS_DIR_ENV, dag_file_source
from flexflow.spec import SpecError, load_spec
from flexflow.spec.folder import lenient_dag_id
from tests.conftest import ROOT

HOSTILE = Path(__file__).parent / "specs" / "hostile"
VALID = Path(__file__).parent / "specs" / "valid"
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
CORPUS = sorted(HOSTILE.glob("*.yaml"))
CLASSES = ("template", "publish", "airflow", "bounded", "secret", "escape")
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$", re.MULTILINE)
MINIMUM_CORPUS = 100


def expectations(file: Path) -> list[tuple[int, int, str]]:
    return [(int(line), int(column), message) for line, column, message in EXPECT.findall(file.read_text())]


def test_the_corpus_is_large_and_every_file_names_its_class() -> None:
    assert len(CORPUS) >= MINIMUM_CORPUS, f"{len(CORPUS)} hostile specs; the corpus holds at least {MINIMUM_CORPUS}"
    for file in CORPUS:
        assert file.stem.split("__")[0] in CLASSES, f"{file.name}: name it <class>__<variation>.yaml"
    ids = [lenient_dag_id(file) for file in CORPUS]
    assert len(set(ids)) == len(ids), "every hostile spec has a dag_id of its own"


@pytest.mark.parametrize("file", CORPUS, ids=lambda file: file.stem)
def test_a_hostile_spec_gets_exactly_its_problems(file: Path) -> None:
    expected = expectations(file)
    assert expected, f"{file.name} states no '# expect: line:column: message' header"
    with pytest.raises(SpecError) as info:
        load_spec(file)
    got = [(p.line, p.column, p.message) for p in info.value.problems]
    assert got == expected, "\n".join(str(p) for p in info.value.problems)


def test_dagbag_loads_every_valid_spec_and_flags_every_hostile_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    specs = tmp_path / "specs"
    specs.mkdir()
    valid = [*sorted(VALID.glob("*.yaml")), *EXAMPLES]
    for file in [*valid, *CORPUS]:
        shutil.copy(file, specs / file.name)
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / DAG_FILE_NAME).write_text(dag_file_source(str(specs)))
    monkeypatch.delenv(SPECS_DIR_ENV, raising=False)
    bag = DagBag(dag_folder=dags, bundle_path=dags, bundle_name="hostile")
    assert bag.import_errors == {}
    for file in valid:
        dag = bag.dags[load_spec(file).dag_id]
        assert INVALID_TAG not in dag.tags, file.name
    for file in CORPUS:
        dag = bag.dags.get(lenient_dag_id(file))
        assert dag is not None and INVALID_TAG in dag.tags, f"{file.name} is not its own flagged DAG"
