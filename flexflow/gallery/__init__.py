"""The flexflow gallery: an Airflow UI plugin that shows a DAG's published run and the run awaiting approval."""
