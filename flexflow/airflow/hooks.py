"""The Apiframe connection (type ``apiframe``) and the hook that turns it into API clients."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from airflow.sdk.log import mask_secret

from flexflow.client import AsyncFluxClient, FluxClient, RetryPolicy
from flexflow.client._calls import ApiKey
from flexflow.client.hosts import is_loopback
from flexflow.contract.wire import PRODUCTION_BASE_URL, job_path

# httpx2 logs every request at INFO: a thousand waiting jobs would fill the task logs with polls.
# (Airflow quiets httpx the same way.) flexflow logs what matters: submits, transitions, retries.
logging.getLogger("httpx2").setLevel(logging.WARNING)

DEFAULT_CONN_ID = "apiframe_default"
DEFAULT_REQUEST_TIMEOUT = 60
DEFAULT_MAX_ATTEMPTS = 5
#: Where the "Apiframe job" link points; {base_url} and {job_id} are filled in.
DEFAULT_JOB_LINK = "{base_url}" + job_path("{job_id}")


@dataclass(frozen=True)
class ApiSettings:
    """What a connection says about reaching the API. The key is wrapped: it never prints."""

    base_url: str
    api_key: ApiKey = field(repr=False)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    job_link: str = DEFAULT_JOB_LINK

    @classmethod
    def from_connection(cls, conn: Connection) -> ApiSettings:
        if not conn.password:
            raise ValueError(
                f"connection '{conn.conn_id}' has no API key: set its password field (shown as 'API key') "
                "to the Apiframe key"
            )
        mask_secret(conn.password)
        extra: dict[str, Any] = conn.extra_dejson or {}
        return cls(
            base_url=_base_url(conn),
            api_key=ApiKey(conn.password),
            request_timeout=float(extra.get("request_timeout") or DEFAULT_REQUEST_TIMEOUT),
            max_attempts=int(extra.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
            job_link=str(extra.get("job_link") or DEFAULT_JOB_LINK),
        )

    def link_for(self, job_id: str) -> str:
        return self.job_link.format(base_url=self.base_url, job_id=job_id)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts)


def _base_url(conn: Connection) -> str:
    """The host field holds a base URL; a bare host gets https (http for loopback, where emulators run)."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return PRODUCTION_BASE_URL
    if "://" in host:
        return host
    scheme = "http" if is_loopback(host) else "https"
    return f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")


class FluxHook(BaseHook):
    """Reads an ``apiframe`` connection and builds the blocking or the asyncio client."""

    conn_name_attr = "apiframe_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "apiframe"
    hook_name = "Apiframe (Flux)"

    def __init__(self, apiframe_conn_id: str = DEFAULT_CONN_ID) -> None:
        super().__init__()
        self.apiframe_conn_id = apiframe_conn_id

    def settings(self) -> ApiSettings:
        """The connection's settings; a missing or keyless connection fails the task at once.

        Retrying cannot fix a configuration error, and every retry of a submit task would wait
        its retry delay for nothing.
        """
        try:
            return ApiSettings.from_connection(self.get_connection(self.apiframe_conn_id))
        except (AirflowNotFoundException, ValueError) as exc:
            raise AirflowFailException(
                f"the Apiframe connection '{self.apiframe_conn_id}' is not usable: {exc}. Create it with "
                f"`airflow connections add {self.apiframe_conn_id} --conn-type apiframe --conn-host <base URL> "
                "--conn-password <API key>` (or an AIRFLOW_CONN_* variable / secrets backend)"
            ) from None

    async def asettings(self) -> ApiSettings:
        """The settings, read without blocking the event loop (for triggers)."""
        return ApiSettings.from_connection(await self.aget_connection(self.apiframe_conn_id))

    def get_conn(self) -> FluxClient:
        return self.client(self.settings())

    @staticmethod
    def client(settings: ApiSettings) -> FluxClient:
        return FluxClient(
            settings.base_url, settings.api_key, timeout=settings.request_timeout, retry=settings.retry_policy()
        )

    @staticmethod
    def async_client(settings: ApiSettings) -> AsyncFluxClient:
        return AsyncFluxClient(
            settings.base_url, settings.api_key, timeout=settings.request_timeout, retry=settings.retry_policy()
        )
