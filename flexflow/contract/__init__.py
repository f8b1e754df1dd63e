"""The Flux 2 Flex API contract: parameter table, wire names, schemas, pixel sizes and prices."""

from flexflow.contract.params import DEFAULTS, FLUX_PARAMS, PARAMS_BY_NAME, FluxParam, apply_defaults
from flexflow.contract.schema import Problem, request_schema, validate_request
from flexflow.contract.sizes import credit_cost, output_size, pixel_size
from flexflow.contract.wire import MODEL_ID, JobStatus

__all__ = [
    "DEFAULTS",
    "FLUX_PARAMS",
    "MODEL_ID",
    "PARAMS_BY_NAME",
    "FluxParam",
    "JobStatus",
    "Problem",
    "apply_defaults",
    "credit_cost",
    "output_size",
    "pixel_size",
    "request_schema",
    "validate_request",
]
