"""docs/parameters.md, generated from the parameter table: ``python -m flexflow.contract.docs``."""

from __future__ import annotations

import json

from flexflow.contract.params import ASPECT_RATIOS, FLUX_PARAMS, RESOLUTIONS
from flexflow.contract.sizes import pixel_size


def parameters_markdown() -> str:
    lines = [
        "# Flux 2 Flex parameters",
        "",
        "Generated from `flexflow/contract/params.py` by `python -m flexflow.contract.docs`; a test fails",
        "when this page is stale. These are the keys of a spec's `flux:` blocks and of the API's `fluxParams`.",
        "",
        "| key | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for p in FLUX_PARAMS:
        default = "-" if p.default is None else f"`{json.dumps(p.default)}`"
        lines.append(f"| `{p.name}` | {p.type} | {default} | {p.allowed_text()} | {p.description} |")
    notes = [f"- `{p.name}`: {p.note}" for p in FLUX_PARAMS if p.note]
    lines += ["", *notes, "", "## Pixel sizes", "", "| resolution | " + " | ".join(ASPECT_RATIOS) + " |"]
    lines.append("|---|" + "---|" * len(ASPECT_RATIOS))
    for resolution in RESOLUTIONS:
        sizes = " | ".join("{}x{}".format(*pixel_size(resolution, ratio)) for ratio in ASPECT_RATIOS)
        lines.append(f"| {resolution} | {sizes} |")
    lines += ["", "Sides are rounded to multiples of 16, as the provider requires.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameters_markdown(), end="")  # noqa: T201
