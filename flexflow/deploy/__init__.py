"""Running flexflow in a real Airflow deployment on this machine, every service a separate process.

See :mod:`flexflow.deploy.harness` (``python -m flexflow.deploy.harness --help``).
"""
