"""PostgreSQL and Redis for the Celery configuration: whether they are here, and a database of our own in each.

The PostgreSQL database is created for one deployment and dropped at its teardown; the Redis
database (1-15) is claimed atomically with an owner key, and flushed at teardown (only the
deployment's keys, should the claim have expired meanwhile).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from tests.deployment.harness.processes import reachable
from tests.deployment.harness.waiting import HarnessError

REDIS_OWNER_KEY = "flexflow-deploy:owner"
Address = tuple[str, int]


class ServicesUnavailable(HarnessError):
    """PostgreSQL or Redis is not reachable: the Celery configuration cannot run here."""


def services_available(postgres: Address = ("127.0.0.1", 5432), redis: Address = ("127.0.0.1", 6379)) -> str | None:
    """None when the Celery configuration can run here, else why not (a message for a skip)."""
    missing = [
        f"{name} on {host}:{port}"
        for name, (host, port) in (("PostgreSQL", postgres), ("Redis", redis))
        if not reachable(host, port)
    ]
    if missing:
        return f"the Celery configuration needs {' and '.join(missing)}: not reachable"
    return None


def check_celery_services(postgres: Address, redis: Address) -> None:
    """Raise ServicesUnavailable unless both services answer and the 'deploy' extra is installed."""
    problem = services_available(postgres, redis)
    if problem:
        raise ServicesUnavailable(problem)
    try:
        for module in ("airflow.providers.celery", "psycopg2", "redis"):
            importlib.import_module(module)
    except ImportError as exc:
        message = f"the Celery configuration needs flexflow's 'deploy' extra installed ({exc})"
        raise ServicesUnavailable(message) from None


@contextlib.contextmanager
def _admin_cursor(postgres: Address) -> Iterator[Any]:
    """A cursor on the server's ``postgres`` database as the ``postgres`` user, autocommitting."""
    import psycopg2

    host, port = postgres
    connection = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres", connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def create_database(postgres: Address, name: str) -> None:
    """A fresh PostgreSQL database ``name``."""
    import psycopg2

    with _admin_cursor(postgres) as cursor:
        try:
            cursor.execute(f'CREATE DATABASE "{name}"')
        except psycopg2.Error as exc:
            host, port = postgres
            raise ServicesUnavailable(f"cannot create a PostgreSQL database on {host}:{port}: {exc}") from None


def drop_database(postgres: Address, name: str) -> None:
    """Drop the database ``name``, ending the sessions still connected to it."""
    with _admin_cursor(postgres) as cursor:
        cursor.execute(  # WITH (FORCE) needs PostgreSQL 13; this works everywhere
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')


def claim_redis_database(address: Address, owner: str) -> int:
    """The number of an empty Redis database, now ``owner``'s (the claim expires after a day)."""
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis(host=address[0], port=address[1], db=number, socket_timeout=5)
        try:
            if client.dbsize() == 0 and client.set(REDIS_OWNER_KEY, owner, nx=True, ex=24 * 3600):
                if client.dbsize() == 1:
                    return number
                client.delete(REDIS_OWNER_KEY)  # someone else was using it after all
        finally:
            client.close()
    raise ServicesUnavailable(f"no unused Redis database (1-15) on {address[0]}:{address[1]}")


def release_redis_database(address: Address, number: int, owner: str) -> None:
    """Flush ``owner``'s Redis database; only ``owner``'s keys if the claim expired (another may use it now)."""
    import redis

    client = redis.Redis(host=address[0], port=address[1], db=number, socket_timeout=5)
    try:
        if client.get(REDIS_OWNER_KEY) == owner.encode():
            client.flushdb()
        else:
            for key in client.scan_iter(f"*{owner}*"):
                client.delete(key)
    finally:
        client.close()
