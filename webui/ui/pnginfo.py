"""PNG Info: reading the settings a dropped PNG carries, and filling the page from them.

Only what is available here is filled in: a model, LoRA or ControlNet that is not installed is
named in a warning instead, so the page never points at something it cannot load.
`PngInfoHandlers` is a base of `Studio` (handlers.py) and uses its listings (`RequestBuilder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from .. import engine as E
from .. import infotext
from .. import params as P
from ..engine import CONTROLNET_SUBDIR, DETECTOR_SUBDIR, IP_ADAPTER_SUBDIR, LORA_SUBDIR
from . import uploads, xy
from .fields import (CONTROLNET_UNITS, FILL_FIELDS, LABELS, LORA_HEADERS, SUMMARY_FIELDS,
                     UNIT_KEYS, _error, shown_folder)


def _value_text(value) -> str:
    """A setting as the PNG Info summary shows it."""
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, P.LoraWeight):
                parts.append(f"{item.name}:{item.weight:g}")
            elif isinstance(item, P.ControlNetUnit):
                parts.append(f"{Path(item.model).name} ({item.preprocessor}, scale "
                             f"{item.scale:g}, {item.source})")
        return "; ".join(parts) if value and isinstance(value[0], P.ControlNetUnit) \
            else ", ".join(parts)
    return xy.value_label(value)


class PngInfoHandlers:
    """The PNG Info tab's handlers, and Send to img2img."""

    def png_info(self, image) -> tuple[str, str]:
        """(raw parameters text, readable summary) of a dropped PNG."""
        if image is None:
            return "", "Drop a PNG here to read the settings it was made with."
        if isinstance(image, Image.Image):
            picture = image
        else:
            # A payload for a file gradio holds, or a Path from in-process code; a bare string
            # or any other file is refused alike (see uploads.py).
            path = uploads.held_file(image) if isinstance(image, dict) else image
            if not isinstance(path, Path):
                return "", "The upload did not arrive; drop the image again."
            try:
                picture = Image.open(path)
            except Image.DecompressionBombError:
                # Its header claims billions of pixels: not opened at all, whatever it holds.
                return "", ("**Too large to read**: this file claims more pixels than any "
                            "picture the studio opens.")
            except Exception:  # noqa: BLE001 - decoders raise many kinds for a bad file
                return "", "**Not an image file** (PNG, JPEG, WebP, ...)."
        text = E.read_infotext(picture)
        if not text:
            return "", ("This image carries no generation parameters (it may have been "
                        "re-saved by another program, or never had any).")
        if len(text) > infotext.MAX_CHARS:
            # Not shown either: a megabyte of text would only slow every browser down.
            return "", (f"This image's parameters text is {len(text):,} characters long, more "
                        f"than the {infotext.MAX_CHARS:,} that are read; it was not used.")
        return text, self._parsed_summary(infotext.parse(text))

    @staticmethod
    def _parsed_summary(parsed: infotext.Parsed) -> str:
        rows = ["| setting | value |", "|---|---|"]
        params = parsed.params
        for name in SUMMARY_FIELDS:
            if name in parsed.fields:
                rows.append(f"| {LABELS[name]} | {_value_text(getattr(params, name))} |")
        for key, value in parsed.extras.items():
            rows.append(f"| {key} | {value} |")
        parts = ["\n".join(rows)]
        if parsed.warnings:
            parts.append("**Not usable here:**\n" + "\n".join(f"- {w}" for w in parsed.warnings))
        return "\n\n".join(parts)

    def send_to_img2img(self, text: str | None) -> tuple:
        """Updates for FILL_FIELDS, then the tab switch and a message.

        Every setting the page holds is set: to the text's value, or to its default when the
        text does not mention it, so that the same seed gives the same picture again (a LoRA,
        ControlNet unit or reference model left from earlier would change it). What cannot be
        restored here (a model, LoRA or ControlNet that is not installed) is listed, and the
        model picker keeps the current model when the text names none or an unknown one.
        """
        if not (text or "").strip():
            raise _error("Drop a PNG with generation parameters first.", title="PNG Info")
        parsed = infotext.parse(text)
        warnings = list(parsed.warnings)
        values = parsed.params.model_dump()  # defaults where the text says nothing
        fill: dict[str, Any] = {}
        filled: list[str] = []
        reset: list[str] = []
        for name in P.GenerationParams.model_fields:
            if name not in FILL_FIELDS and name != "controlnets":
                continue  # not a control on the page (precision, output type)
            given = name in parsed.fields
            value = values[name]
            if name == "model":
                if not given:
                    continue
                value = self._known_model(value)
                if value is None:
                    warnings.append(f"Model: {values['model']!r} is not available here; kept the "
                                    "current model")
                    continue
            elif name in ("width", "height") and value is None:
                value = 0
            elif name == "loras":
                self._fill_loras(value, fill, warnings)
            elif name == "ip_adapter" and value:
                value = self._adapter_choice(IP_ADAPTER_SUBDIR, value)
                if value is None:
                    warnings.append(f"IP-Adapter: {values['ip_adapter']!r} is not in "
                                    f"{shown_folder(self.engine, IP_ADAPTER_SUBDIR)}; left off")
                    value = ""
            elif name == "controlnets":
                self._fill_controlnets(value, fill, warnings)
            if name in FILL_FIELDS and name != "loras":
                fill[name] = value
            (filled if given else reset).append(LABELS[name])
        updates = [fill.get(key, gr.skip()) for key in FILL_FIELDS]
        for warning in warnings:
            gr.Warning(warning)
        message = "Filled from the text: " + (", ".join(filled) or "nothing") + "."
        if reset:
            message += " Back to their defaults (the text does not mention them): " + \
                ", ".join(reset) + "."
        if warnings:
            message += "\n\n**Not restored:**\n" + "\n".join(f"- {w}" for w in warnings)
        return (*updates, gr.Tabs(selected="img2img"), message)

    def _fill_loras(self, loras: list[dict], fill: dict, warnings: list[str]) -> None:
        known = self.available_loras()
        rows = []
        for lora in loras:
            if lora["name"] in known:
                rows.append([lora["name"], lora["weight"]])
            else:
                warnings.append(f"LoRAs: {lora['name']!r} is not in "
                                f"{shown_folder(self.engine, LORA_SUBDIR)}; left out")
        fill["loras"] = gr.update(choices=known, value=[name for name, _ in rows])
        fill["lora_weights"] = gr.update(value={"headers": LORA_HEADERS, "data": rows},
                                         visible=bool(rows))

    def _fill_controlnets(self, units: list[dict], fill: dict, warnings: list[str]) -> None:
        # Units the text does not mention are switched off, so the job is the one in the text.
        for n in range(1, CONTROLNET_UNITS + 1):
            unit = units[n - 1] if n <= len(units) else None
            fill[f"cn{n}_enabled"] = False
            if unit is None:
                continue
            model = self._adapter_choice(CONTROLNET_SUBDIR, unit["model"])
            if model is None:
                warnings.append(f"ControlNet unit {n}: {unit['model']!r} is not in "
                                f"{shown_folder(self.engine, CONTROLNET_SUBDIR)}; the "
                                "unit is left off")
                continue
            fill[f"cn{n}_enabled"] = True
            fill.update({f"cn{n}_{key}": unit[key] for key in UNIT_KEYS
                         if key not in ("enabled", "image")})
            fill[f"cn{n}_model"] = model
            if unit["detector"] and unit["detector"] not in self.engine.list_detectors():
                warnings.append(f"ControlNet unit {n}: the detector {unit['detector']!r} is not "
                                f"in {shown_folder(self.engine, DETECTOR_SUBDIR)}; the first of "
                                "its kind is used")
                fill[f"cn{n}_detector"] = ""

    def _known_model(self, name: str) -> str | None:
        for known in self.models():
            if name in (known, Path(known).stem, Path(known).name):
                return known
        return None
