"""Pixel size and price of an output, from its resolution and aspect ratio."""

from __future__ import annotations

import math
from decimal import Decimal
from functools import cache

from flexflow.contract.params import DEFAULTS, JsonScalar

MEGAPIXEL = 1_048_576  # 1MP 1:1 is 1024x1024
SIDE_MULTIPLE = 16  # providers round sides to multiples of 16 (BFL's API requires it)


def megapixels(resolution: str) -> Decimal:
    """``"0.5MP"`` -> ``Decimal("0.5")``."""
    if not resolution.endswith("MP"):
        raise ValueError(f"resolution {resolution!r} is not of the form <number>MP")
    return Decimal(resolution[:-2])


@cache
def pixel_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) of an output: about N x 1,048,576 pixels in the ratio w:h, sides rounded to 16."""
    ratio_w, ratio_h = (int(part) for part in aspect_ratio.split(":"))
    area = float(megapixels(resolution)) * MEGAPIXEL
    width = math.sqrt(area * ratio_w / ratio_h)
    height = width * ratio_h / ratio_w
    return _round_side(width), _round_side(height)


def _round_side(side: float) -> int:
    return max(SIDE_MULTIPLE, round(side / SIDE_MULTIPLE) * SIDE_MULTIPLE)


def output_size(flux_params: dict[str, JsonScalar]) -> tuple[int, int]:
    """Pixel size of the output of a request's ``fluxParams`` (defaults filled in)."""
    resolution = str(flux_params.get("resolution", DEFAULTS["resolution"]))
    aspect_ratio = str(flux_params.get("aspect_ratio", DEFAULTS["aspect_ratio"]))
    return pixel_size(resolution, aspect_ratio)


#: Credits per started megapixel, in the API's smallest unit. Black Forest Labs prices FLUX.2 [flex]
#: at about $0.05 for the first megapixel plus $0.05 per further one, input images included; the
#: emulator bills this, and cost estimates use it unless told otherwise.
CREDITS_PER_MEGAPIXEL = 5


def billed_megapixels(flux_params: dict[str, JsonScalar]) -> int:
    """Megapixels a request is billed for: output rounded up (at least 1), plus 1 for a reference image."""
    output = megapixels(str(flux_params.get("resolution", DEFAULTS["resolution"])))
    return max(1, math.ceil(output)) + (1 if flux_params.get("image_prompt") else 0)


def credit_cost(flux_params: dict[str, JsonScalar]) -> int:
    return billed_megapixels(flux_params) * CREDITS_PER_MEGAPIXEL
