"""flexflow: YAML specs compiled into Airflow DAGs that generate images with Flux 2 Flex."""

__version__ = "0.1.0"
