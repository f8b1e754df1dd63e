"""A real Airflow deployment of flexflow on this machine, every service a separate process.

Test infrastructure, not part of the installed package: the deployment suite (``tests/deployment``)
and ``benchmarks/deployment_load.py`` use it.

``Deployment`` (:mod:`.deployment`) starts, on loopback and in a private AIRFLOW_HOME, the API
emulator, ``airflow api-server``, ``airflow scheduler``, ``airflow dag-processor`` and ``airflow
triggerer`` (and, for the Celery configuration, ``airflow celery worker`` processes), waits until
Airflow reports them healthy and the specs' DAGs are parsed, and tears everything down again by the
process ids it started, whatever happens. Two configurations:

``local``
    LocalExecutor on a SQLite file: what ``airflow standalone`` uses; needs nothing installed.
``celery``
    CeleryExecutor, PostgreSQL as the metadata database (a fresh database, created and dropped)
    and result backend, Redis as the broker (a queue of its own), one or more Celery workers.

The DAG bundle is a single LocalDagBundle holding flexflow's DAG file
(``flexflow.compiler.loader.dag_file_source``) for the specs folder, which ``FLEXFLOW_SPECS_DIR``
names too, and the connection ``apiframe_default`` points at the emulator. Drive it through
Airflow's REST API (``.api``, :mod:`.rest`) and the emulator's control routes (``.emulator``,
:mod:`.emulator`)::

    with Deployment("local", specs_dir=Path("specs")) as deployment:
        run = deployment.api.trigger("aurora_launch_set")
        deployment.api.wait_for_run("aurora_launch_set", run["dag_run_id"])

The other modules: :mod:`.processes` (services as process groups, marked processes, ports),
:mod:`.databases` (PostgreSQL and Redis for the Celery configuration), :mod:`.measure` (slot-seconds,
memory, task processes), :mod:`.billing` (the "one billed job per image" oracle) and
:mod:`.waiting` (polling, the harness's error).

As a command, from the repository (foreground; Ctrl-C or ``down`` tears it down)::

    python -m tests.deployment.harness up --config local --specs specs/ --home /tmp/ff-deploy
    python -m tests.deployment.harness down --home /tmp/ff-deploy
"""
