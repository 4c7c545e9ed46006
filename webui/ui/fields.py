"""What each field is called on the page, and the table of keyword inputs beyond the basics.

An error names the control to fix by its page label (`_label`, `_fail`), and the keyword inputs
(EXTRAS) fix both what app.py wires by name and what the page's API lists (`_keyword_extras`).
The request builder, the PNG Info handlers and the other handlers all read these, so they live
apart from any of them and import nothing of the studio's own.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any

import gradio as gr

from .. import params as P

if TYPE_CHECKING:
    # Annotations only: importing the in-process engine loads torch, which the studio's
    # modules never do themselves (launch.py builds the engine).
    from ..engine import Engine

# What each field is called on the page, so an error points at the control to fix.
LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "strength": "Denoising strength",
    "guidance_scale": "CFG scale",
    "steps": "Sampling steps",
    "seed": "Seed",
    "scheduler": "Sampler",
    "width": "Width",
    "height": "Height",
    "resize_mode": "Resize mode",
    "batch_count": "Batch count",
    "batch_size": "Batch size",
    "model": "Model",
    "dtype": "Precision",
    "init_image": "Init image",
    "reference_image": "Reference image",
    "loras": "LoRAs",
    "lora_weights": "LoRA weights",
    "ip_adapter": "IP-Adapter",
    "ip_adapter_scale": "IP-Adapter scale",
    "pag_scale": "PAG scale",
    "draft": "Draft",
    "attention_slicing": "Attention slicing",
    "vae_tiling": "VAE tiling",
    "cpu_offload": "CPU offload",
    "output_type": "Output type",
    "latents": "Latent input",
    "mode": "Mode",
    "mask": "Mask",
    "mask_image": "Mask upload",
    "mask_blur": "Mask blur",
    "inpaint_area": "Inpaint area",
    "inpaint_padding": "Masked area padding",
    "masked_content": "Masked content",
    "controlnets": "ControlNet",
    # The engine's adapter errors name these inputs.
    "lora": "LoRA",
    "controlnet": "ControlNet",
    "padding": "Masked area padding",
    "inpaint_full_res": "Inpaint area",
    "pag": "PAG scale",
    "image": "Init image",
    "adapters": "Adapters",
    "color_correction": "Colour correction",
    "loopback_passes": "Loopback passes",
    "loopback_strength_factor": "Loopback strength factor",
    "loopback_color_correction": "Loopback colour correction",
}

CONTROLNET_UNITS = 3
LORA_HEADERS = ["LoRA", "weight"]
# What a ControlNet unit's controls are called (cn1_model, cn2_scale, ...), in wiring order.
UNIT_KEYS = ("enabled", "model", "source", "image", "preprocessor", "detector", "scale", "start",
             "end", "low", "high")


def _unit_default(key: str):
    if key == "enabled":
        return False
    if key == "image":
        return None
    info = P.ControlNetUnit.model_fields[key]
    return "" if info.is_required() else info.default


# Inputs beyond the basic img2img settings, passed by keyword (app.py wires them with
# inputs_kwargs), with what an API client gets when it leaves one out.
EXTRAS: dict[str, Any] = {
    "mode": "img2img",
    "mask": None,  # the mask editor's value: strokes painted over the picture
    "mask_image": None,  # an uploaded mask, white = repaint
    "mask_blur": P.default("mask_blur"),
    "inpaint_area": P.default("inpaint_area"),
    "inpaint_padding": P.default("inpaint_padding"),
    "masked_content": P.default("masked_content"),
    "loras": None,  # names picked from models/Lora
    "lora_weights": None,  # rows of (name, weight); a picked LoRA missing here weighs 1
    "ip_adapter": P.default("ip_adapter"),
    "ip_adapter_scale": P.default("ip_adapter_scale"),
    "pag_scale": P.default("pag_scale"),
    "draft": P.default("draft"),
    "attention_slicing": P.default("attention_slicing"),
    "vae_tiling": P.default("vae_tiling"),
    "cpu_offload": P.default("cpu_offload"),
    "output_type": P.default("output_type"),
    "color_correction": P.default("color_correction"),
    "latents": None,  # a .safetensors latent file to start from
    **{f"cn{n}_{key}": _unit_default(key) for n in range(1, CONTROLNET_UNITS + 1)
       for key in UNIT_KEYS},
}

BASIC_FIELDS = ("model", "prompt", "negative_prompt", "strength", "guidance_scale", "steps",
                "seed", "scheduler", "width", "height", "resize_mode", "batch_count", "batch_size")
# The controls "Send to img2img" fills, in the order app.py wires them: the basic settings, then
# the EXTRAS controls that hold settings (not the pictures, files or the mode).
FILL_FIELDS = BASIC_FIELDS + tuple(
    key for key in EXTRAS
    if key not in ("mode", "mask", "mask_image", "latents", "output_type")
    and not key.endswith("_image"))
# Settings the summary of a dropped PNG lists, in this order.
SUMMARY_FIELDS = tuple(name for name in P.GenerationParams.model_fields
                       if name not in ("prompt", "negative_prompt"))


def shown_folder(engine: Engine, subfolder: str) -> str:
    """A models subfolder as the page names it: 'models/Lora/', never the server's full path
    (a shared page must not show how the server's disk is laid out)."""
    return f"{engine.models_dir.name}/{subfolder}/"


def _error(message: str, title: str = "Error") -> gr.Error:
    # Expected input problems: a toast for the artist, no traceback in the server log.
    return gr.Error(message, title=title, print_exception=False)


_NESTED = re.compile(r"^(loras|controlnets)\[(\d+)\](?:\.(\w+))?")
_UNIT_CONTROL = re.compile(r"^cn(\d)_(\w+)$")


def _label(field: str, units: list[int] | None = None) -> str:
    """What the page calls a field: 'Sampler', 'LoRA 1 weight', 'ControlNet unit 2 scale'."""
    if field in LABELS:
        return LABELS[field]
    nested = _NESTED.match(field)
    if nested:
        kind, index, leaf = nested.groups()
        number = int(index) + 1
        if kind == "controlnets" and units and int(index) < len(units):
            # Only enabled units reach the settings, so controlnets[0] may be unit 2 on the page.
            number = units[int(index)]
        what = f"LoRA {number}" if kind == "loras" else f"ControlNet unit {number}"
        return f"{what} {leaf}" if leaf else what
    unit = _UNIT_CONTROL.match(field)
    if unit:
        return f"ControlNet unit {unit[1]} {unit[2]}"
    return field


def _fail(field: str, message: str, units: list[int] | None = None) -> gr.Error:
    """A gr.Error that names the field as the page labels it (nested settings keep their path,
    e.g. 'loras[0].weight', after the page's name)."""
    label = _label(field, units)
    text = str(message)
    if label != field and _NESTED.match(field):
        return _error(f"{label}: {text}", title=label)
    # Engine and params messages start with the raw field name; show the page's name instead.
    if text.startswith(label):
        pass  # the engine already named it as the page does ("ControlNet: ...")
    elif text.startswith(f"{field}: "):
        text = f"{label}: {text[len(field) + 2:]}"
    elif text.startswith(f"{field} "):
        text = label + text[len(field):]
    else:
        text = f"{label}: {text}"
    return _error(text, title=label)


def _keyword_extras(function):
    """Name every EXTRAS setting in `function`'s signature (it takes them as **extras), so the
    page's API lists each one with its default and a client may pass any of them by name."""
    signature = inspect.signature(function)
    fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    named = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
             for name, value in EXTRAS.items()]
    function.__signature__ = signature.replace(parameters=fixed + named)
    return function
