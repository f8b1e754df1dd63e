"""Airflow building blocks: hook, FluxFlexOperator, FluxJobSensor, FluxJobTrigger, the job link."""
