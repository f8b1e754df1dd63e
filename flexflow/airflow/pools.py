"""The Airflow pool that caps a deployment's jobs in flight: created or updated in the metadata database.

A compiled spec's submit task holds one slot of its pool from the submit until its job has ended
(deferred in the triggerer meanwhile), so the pool must count deferred tasks (``include_deferred``):
then the jobs in flight across every DAG never exceed the pool's slots.
"""

from __future__ import annotations

from collections.abc import Iterable

from flexflow import defaults

#: More slots than any team's concurrent-job limit: a larger value is a typo.
MAX_POOL_SLOTS = 10_000
DESCRIPTION = "flexflow: Apiframe jobs in flight (the team's concurrent-job limit); counts deferred tasks"


def set_pool(name: str = defaults.POOL, slots: int = defaults.POOL_SLOTS) -> None:
    """Create the pool, or update its slots, counting deferred tasks (in this AIRFLOW_HOME's database)."""
    from airflow.models.pool import Pool  # Airflow's own model: the database of the current AIRFLOW_HOME

    Pool.create_or_update_pool(name, slots, DESCRIPTION, include_deferred=True)


def ensure_pools(names: Iterable[str], slots: int = defaults.POOL_SLOTS) -> list[str]:
    """Create each pool that does not exist yet (an existing one is left as its owner set it); the created."""
    from airflow.models.pool import Pool

    created = []
    for name in sorted(set(names) - {Pool.DEFAULT_POOL_NAME}):
        if Pool.get_pool(name) is None:
            set_pool(name, slots)
            created.append(name)
    return created


def pool_slots_problem(slots: int) -> str | None:
    """Why ``slots`` is no pool size for flexflow, or None."""
    if 1 <= slots <= MAX_POOL_SLOTS:
        return None
    return f"slots must be from 1 to {MAX_POOL_SLOTS} (the team's concurrent-job limit), not {slots}"
