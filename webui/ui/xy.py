"""The X/Y plot tab's own values: the axes its dropdowns offer and what a freshly picked axis
starts with. The plot itself (axes, cells, grids, the saved file) is webui.xyplot, shared with the
command line."""

from __future__ import annotations

from ..xyplot import AXES, EXAMPLES, MAX_CELLS, NOTHING, value_label

__all__ = ["AXES", "DEFAULT_VALUES", "MAX_CELLS", "NOTHING", "Z_AXES", "default_values",
           "value_label"]

# The Z axis may be left off, so its dropdown offers Nothing first.
Z_AXES = [NOTHING, *AXES]
# What a freshly picked axis starts with: the usual comparison points. A search/replace depends
# on the artist's prompt, so it starts empty and the error shows an example.
DEFAULT_VALUES: dict[str, str] = {**EXAMPLES, "prompt_sr": ""}


def default_values(axis: str) -> str:
    return DEFAULT_VALUES.get(AXES.get(axis, ""), "")
