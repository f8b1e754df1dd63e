"""The "Apiframe job" extra link on submit and wait tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from flexflow.airflow.keys import JOB_LINK_XCOM_KEY

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class ApiframeJobLink(BaseOperatorLink):
    name = "Apiframe job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(ti_key=ti_key, key=JOB_LINK_XCOM_KEY) or ""
