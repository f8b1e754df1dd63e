"""The root of flexflow's errors: every error flexflow raises on purpose derives from :class:`FlexflowError`.

Each layer adds its own small family below it: the API client's (``flexflow.client.errors``), the
spec loader's (``flexflow.spec.problems.SpecError``) and publishing's (``flexflow.client.results``).
This module imports nothing of flexflow, so every layer can use it.
"""

from __future__ import annotations


class FlexflowError(Exception):
    """Base of every error flexflow raises on purpose."""
