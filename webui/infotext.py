"""The `parameters` text stored in output PNGs, in the layout the wider SD tool ecosystem reads.

    a prompt, possibly over several lines
    Negative prompt: a negative prompt
    Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 123, Size: 512x512, ...

`format()` writes it from GenerationParams; `parse()` reads it back (also text written by other
tools, whose unknown keys are kept as extras and whose unusable values become warnings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import schedulers
from .params import GenerationParams, ParamsError, make

VERSION = "img2img-webui"

# The longest infotext read (a PNG's `parameters` chunk, or pasted text): two prompts at their
# 20,000-character limit and a settings line fit with room to spare.
MAX_CHARS = 100_000
# Characters a settings key may hold ("Schedule type", "Hires upscale", "ControlNet 0", ...).
_MAX_KEY = 100  # no tool's key is longer ("Hires negative prompt", "ControlNet 0"...)
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ -/+().")
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _quote(value: Any) -> str:
    text = _number(value) if isinstance(value, float) else str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _number(value: float) -> str:
    # 7.0 -> "7", 0.65 -> "0.65": what people type and what other tools write.
    return f"{value:.6g}" if value != int(value) else str(int(value))


def format(params: GenerationParams, *, seed: int, width: int, height: int,
           model_name: str = "", model_hash: str = "", inpaint: bool = False,
           extra: dict[str, Any] | None = None) -> str:
    """The infotext of one image: `seed` and the size are the ones actually used for it;
    `inpaint` adds the inpaint settings (they mean nothing without a mask)."""
    sampler, schedule = schedulers.split_schedule(params.scheduler)
    pairs: dict[str, Any] = {
        "Steps": params.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": float(params.guidance_scale),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name or params.model,
        "Denoising strength": float(params.strength),
    }
    if params.resize_mode != "just resize":
        pairs["Resize mode"] = params.resize_mode.capitalize()
    if params.batch_size > 1:
        pairs["Batch size"] = params.batch_size
    if params.dtype != "auto":
        pairs["Dtype"] = params.dtype
    for key, name in _MEMORY_KEYS.items():
        if getattr(params, name) != "auto":
            pairs[key] = getattr(params, name)
    if params.loras:
        pairs["LoRAs"] = ", ".join(f"{l.name}:{_number(float(l.weight))}" for l in params.loras)
    if params.ip_adapter:
        pairs["IP-Adapter"] = params.ip_adapter
        pairs["IP-Adapter scale"] = float(params.ip_adapter_scale)
    pairs["PAG scale"] = float(params.pag_scale)
    if params.draft:
        pairs["Draft"] = params.draft
    if inpaint:
        pairs["Mask blur"] = params.mask_blur
        pairs["Inpaint area"] = params.inpaint_area.capitalize()
        pairs["Masked area padding"] = params.inpaint_padding
        pairs["Masked content"] = params.masked_content
    if params.color_correction:
        # Only when on, as other tools write it: text without the key reads back as off.
        pairs["Color correction"] = True
    for index, unit in enumerate(params.controlnets):
        pairs[f"ControlNet {index}"] = ", ".join(
            f"{k}: {_number(v) if isinstance(v, float) else v}"
            for k, v in unit.model_dump().items() if v != "")
    pairs.update(extra or {})
    pairs["Version"] = VERSION
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs.items() if v not in ("", None))
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    lines.append(line)
    return "\n".join(lines)


_MEMORY_KEYS = {"Attention slicing": "attention_slicing", "VAE tiling": "vae_tiling",
                "CPU offload": "cpu_offload"}


@dataclass
class Parsed:
    """What was read: params (defaults where the text says nothing), the keys this tool does not
    use, and one warning per value that could not be used."""

    params: GenerationParams
    extras: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Fields the text actually set, so a UI can fill only those.
    fields: set[str] = field(default_factory=set)


def _pairs(line: str) -> dict[str, str]:
    """The `key: value` pairs of a settings line, in one left-to-right pass.

    Values are plain text up to the next comma, or a JSON-quoted string (which may hold commas)
    followed by a comma or the end. A scanner rather than a regular expression: a pattern that
    retries a key at every position backtracks quadratically on long text without colons, and
    one such PNG held the whole server for minutes.
    """
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        colon, comma = line.find(":", i), line.find(",", i)
        if colon < 0:
            break
        if 0 <= comma < colon:
            # No key before the last comma ahead of this colon (text from another tool): jump
            # there at once, so a long run of commas costs one scan, not one per comma.
            i = line.rfind(",", i, colon) + 1
            continue
        key = _key(line[i:colon])
        j = colon + 1
        while j < n and line[j] in " \t":
            j += 1
        value, i = _value(line, j)
        if key:
            out[key] = value
    return out


def _key(text: str) -> str:
    """The key right before a colon: the longest run (of at most _MAX_KEY) of key characters
    ending there that starts with a letter, digit or underscore ('' when there is none)."""
    start, stop = len(text), max(0, len(text) - _MAX_KEY)
    while start > stop and text[start - 1] in _KEY_CHARS:
        start -= 1
    while start < len(text) and not (text[start].isalnum() or text[start] == "_"):
        start += 1
    return text[start:].strip()


def _value(line: str, start: int) -> tuple[str, int]:
    """(the value starting at `start`, the index after it and its comma)."""
    n = len(line)
    if start < n and line[start] == '"':
        j = start + 1
        while j < n and line[j] != '"':
            j += 2 if line[j] == "\\" else 1
        if j < n and (j + 1 == n or line[j + 1] == ","):
            quoted = line[start:j + 1]
            try:
                return json.loads(quoted), j + 2
            except json.JSONDecodeError:
                return quoted[1:-1], j + 2
    end = line.find(",", start)
    end = n if end < 0 else end
    return line[start:end].strip(), end + 1


def _lora(item: str) -> dict[str, Any]:
    name, _, weight = item.strip().rpartition(":")
    return {"name": name, "weight": weight} if name else {"name": weight}


def _is_settings_line(line: str) -> bool:
    return "Steps:" in line and len(_pairs(line)) >= 3


def _split(text: str) -> tuple[str, str | None, dict[str, str]]:
    """(prompt, negative prompt or None when the text has none, the settings line's pairs)."""
    lines = text.strip().splitlines()
    settings: dict[str, str] = {}
    if lines and _is_settings_line(lines[-1]):
        settings = _pairs(lines.pop())
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt).strip(), ("\n".join(negative).strip() if in_negative else None), \
        settings


def parse(text: str, base: GenerationParams | None = None) -> Parsed:
    """Settings from an infotext; fields it does not mention keep their value in `base`.

    Text longer than MAX_CHARS is not read (a warning says so): no setting is that long, and
    a huge text is more likely an attack than a picture's settings."""
    values = (base or GenerationParams()).model_dump()
    text = text or ""
    if len(text) > MAX_CHARS:
        return Parsed(params=make(**values), warnings=[
            f"the parameters text is {len(text):,} characters long; at most {MAX_CHARS:,} are "
            "read, so nothing was used"])
    prompt, negative, settings = _split(text)
    result = Parsed(params=make(**values))
    # Control characters another tool left in a prompt are dropped, not the whole prompt
    # (the settings refuse them: see GenerationParams).
    proposed: dict[str, Any] = {"prompt": _CONTROL.sub("", prompt)}
    if negative is not None:
        proposed["negative_prompt"] = _CONTROL.sub("", negative)
    simple = {"Steps": "steps", "CFG scale": "guidance_scale", "Seed": "seed",
              "Denoising strength": "strength", "Model": "model", "Batch size": "batch_size",
              "Dtype": "dtype", "IP-Adapter": "ip_adapter", "IP-Adapter scale": "ip_adapter_scale",
              "PAG scale": "pag_scale", "Draft": "draft", "Mask blur": "mask_blur",
              "Masked area padding": "inpaint_padding", "Color correction": "color_correction",
              **_MEMORY_KEYS}
    for key, value in settings.items():
        if key in simple:
            proposed[simple[key]] = value
        elif key == "Size":
            match = _SIZE.match(value)
            if match:
                proposed["width"], proposed["height"] = int(match[1]), int(match[2])
            else:
                result.warnings.append(f"Size: {value!r} is not WIDTHxHEIGHT; kept the current size")
        elif key in ("Resize mode", "Inpaint area", "Masked content"):
            name = {"Resize mode": "resize_mode", "Inpaint area": "inpaint_area",
                    "Masked content": "masked_content"}[key]
            proposed[name] = value.lower()
        elif key == "LoRAs":
            proposed["loras"] = [_lora(item) for item in value.split(",") if item.strip()]
        elif re.fullmatch(r"ControlNet \d", key):
            units = proposed.setdefault("controlnets", [])
            units.append(dict(part.split(": ", 1) for part in value.split(", ") if ": " in part))
        elif key == "Sampler":
            try:
                proposed["scheduler"] = schedulers.join_schedule(value, settings.get("Schedule type"))
            except ValueError:
                result.warnings.append(f"Sampler: {value!r} is not available here; kept "
                                       f"{values['scheduler']!r}")
        elif key != "Schedule type":
            result.extras[key] = value
    # One field at a time, so a single bad value costs only that field.
    for name, value in proposed.items():
        try:
            values = make(**{**values, name: value}).model_dump()
            result.fields.add(name)
        except ParamsError as exc:
            result.warnings.append(str(exc))
    result.params = make(**values)
    return result


def fields(text: str) -> dict[str, str]:
    """The text's settings as the wider tool ecosystem lists them: Prompt, Negative prompt and
    each `key: value` of the settings line as written, with Size also split into Size-1 (width)
    and Size-2 (height). Text longer than MAX_CHARS gives {}."""
    if not text or len(text) > MAX_CHARS:
        return {}
    prompt, negative, settings = _split(text)
    out = {"Prompt": prompt, "Negative prompt": negative or ""}
    out.update(settings)
    match = _SIZE.match(settings.get("Size", ""))
    if match:
        out["Size-1"], out["Size-2"] = match[1], match[2]
    return out
