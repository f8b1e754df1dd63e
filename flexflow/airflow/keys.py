"""Names under which flexflow's tasks keep things in Airflow (XCom, task_state_store).

A module of its own, free of Airflow imports, so the compiler's layout (and ``flexflow plan``) can wire
tasks by these names without loading Airflow. The names are stored in Airflow's database: never rename one.
"""

from __future__ import annotations

#: XCom of submit tasks: the request body as sent (prompt and flux params after templating).
REQUEST_XCOM_KEY = "request"
#: XCom of submit and wait tasks: where the "Apiframe job" button points.
JOB_LINK_XCOM_KEY = "apiframe_job_link"
#: task_state_store of submit tasks: the job record a try wrote; a later try reuses its request and job.
JOB_STATE_KEY = "flexflow_job"
#: XCom of the prepare task when a spec reuses images: ``{request digest: [published file records]}``.
REUSABLE_XCOM_KEY = "reusable"
