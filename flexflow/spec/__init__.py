"""Spec language v1: YAML files describing scheduled image refreshes, validated into typed models."""

from flexflow.spec.folder import FolderResult, find_spec_files, load_folder
from flexflow.spec.model import ImageSpec, PublishSpec, Spec, Variant
from flexflow.spec.pipeline import load_spec, parse_spec
from flexflow.spec.problems import SpecError, SpecProblem
from flexflow.spec.schema import spec_schema

__all__ = [
    "FolderResult",
    "ImageSpec",
    "PublishSpec",
    "Spec",
    "SpecError",
    "SpecProblem",
    "Variant",
    "find_spec_files",
    "load_folder",
    "load_spec",
    "parse_spec",
    "spec_schema",
]
