"""The documented ``fluxParams`` of Flux 2 Flex: the one table every other fact is derived from.

The rows follow the seed page's parameter table (``shared/seed/flux-2-flex-api.md``), plus
``aspect_ratio`` with the five ratios of the page's capability table. The request JSON Schema,
the defaults applied to a request, the emulator's validation and ``docs/parameters.md`` are all
generated from :data:`FLUX_PARAMS`; no range is written down anywhere else.

Numbers with a step are kept as decimal strings (``"0.05"``) so that steps are checked exactly:
binary floating point would make ``0.15 / 0.05`` come out as ``2.9999999999999996``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

ParamType = Literal["string", "number", "integer", "boolean"]
JsonScalar = str | int | float | bool


@dataclass(frozen=True)
class FluxParam:
    """One documented ``fluxParams`` key."""

    name: str
    type: ParamType
    description: str
    default: JsonScalar | None = None
    minimum: str | None = None
    maximum: str | None = None
    step: str | None = None
    choices: tuple[str, ...] = ()
    url: bool = False
    examples: tuple[JsonScalar, ...] = ()
    note: str = ""

    @property
    def has_range(self) -> bool:
        return self.bounds is not None

    @property
    def bounds(self) -> tuple[Decimal, Decimal] | None:
        """``(minimum, maximum)`` as exact decimals, or None when the parameter has no range."""
        if self.minimum is None or self.maximum is None:
            return None
        return Decimal(self.minimum), Decimal(self.maximum)

    def allowed_numbers(self) -> tuple[Decimal, ...]:
        """Every value a stepped number may take, exactly, from minimum to maximum."""
        if self.bounds is None or not self.step:
            raise ValueError(f"{self.name} has no finite set of values")
        (low, high), step = self.bounds, Decimal(self.step)
        count = int((high - low) / step)
        return tuple(low + step * i for i in range(count + 1))

    def allowed_text(self) -> str:
        """The allowed values in words, for error messages and docs."""
        if self.choices:
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        if self.url:
            return "an http(s) URL"
        if self.type == "boolean":
            return "true or false"
        if self.has_range:
            text = f"{self.minimum} to {self.maximum}"
            if self.step and Decimal(self.step) != 1:
                text += f" in steps of {self.step}"
            return ("a whole number from " if self.type == "integer" else "a number from ") + text
        return "any whole number" if self.type == "integer" else f"a {self.type}"


#: Aspect ratios from the seed page's capability table.
ASPECT_RATIOS: tuple[str, ...] = ("1:1", "3:4", "4:3", "9:16", "16:9")
#: Output resolutions, in megapixels, from the seed page's parameter table.
RESOLUTIONS: tuple[str, ...] = ("0.5MP", "1MP", "2MP", "4MP")
OUTPUT_FORMATS: tuple[str, ...] = ("jpg", "png", "webp")


# The kinds of parameter in the table: each row below names its kind and says only what sets it apart.


def _choice(
    name: str, description: str, choices: tuple[str, ...], *, default: str, example: str, note: str = ""
) -> FluxParam:
    return FluxParam(name, "string", description, default, choices=choices, examples=(example,), note=note)


def _url(name: str, description: str, *, example: str) -> FluxParam:
    return FluxParam(name, "string", description, url=True, examples=(example,))


def _number(
    name: str, description: str, minimum: str, maximum: str, *, step: str, default: float, example: float
) -> FluxParam:
    return FluxParam(name, "number", description, default, minimum, maximum, step, examples=(example,))


def _whole(
    name: str,
    description: str,
    minimum: str | None = None,
    maximum: str | None = None,
    *,
    default: int | None = None,
    example: int,
) -> FluxParam:
    """An integer from minimum to maximum, or any integer when there is no range."""
    step = None if minimum is None else "1"
    return FluxParam(name, "integer", description, default, minimum, maximum, step, examples=(example,))


def _flag(name: str, description: str) -> FluxParam:
    """A boolean that is off unless asked for."""
    return FluxParam(name, "boolean", description, default=False, examples=(False,))


FLUX_PARAMS: tuple[FluxParam, ...] = (
    _choice("resolution", "Output size in megapixels.", RESOLUTIONS, default="2MP", example="1MP"),
    _choice(
        "aspect_ratio",
        "Width to height ratio of the output image.",
        ASPECT_RATIOS,
        default="1:1",
        example="16:9",
        note="Not in the seed's parameter table; its capability table lists the five ratios. "
        "The API documents no default: flexflow sends 1:1 when none is given.",
    ),
    _url("image_prompt", "Reference image (URL) to edit or follow.", example="https://example.com/reference.jpg"),
    _number(
        "image_prompt_strength",
        "How closely to follow the reference image (0-1).",
        "0",
        "1",
        step="0.05",
        default=0.5,
        example=0.35,
    ),
    _whole("steps", "Sampling steps.", "1", "50", default=28, example=28),
    _number("guidance", "How strictly to follow the prompt.", "1.5", "10", step="0.1", default=3, example=3.5),
    _choice(
        "output_format", "File format of the output (jpg, not jpeg).", OUTPUT_FORMATS, default="jpg", example="png"
    ),
    _whole("output_quality", "Quality of lossy formats.", "0", "100", default=90, example=90),
    _flag("prompt_upsampling", "Let the model rewrite your prompt for better quality."),
    _flag("go_fast", "Faster generation at lower quality."),
    _whole("seed", "Reuse a number to reproduce the same result.", example=42),
)

PARAMS_BY_NAME: dict[str, FluxParam] = {p.name: p for p in FLUX_PARAMS}
DEFAULTS: dict[str, JsonScalar] = {p.name: p.default for p in FLUX_PARAMS if p.default is not None}


def apply_defaults(flux_params: dict[str, JsonScalar]) -> dict[str, JsonScalar]:
    """The given params with every documented default filled in; given values win."""
    return {**DEFAULTS, **flux_params}
