"""LoRAs: the `<lora:name:weight>` prompt tags, the LoRA files under the LoRA folder, and
the LoRAs loaded into one pipeline (`Loras`).

A LoRA already loaded is never read again, a weight change is one `set_adapters`, and a LoRA
that fails to load leaves the previous job's LoRAs exactly as they were.

The tag parser itself (`parse_prompt_loras`) lives in adapter_inputs.py, which the front doors
import without torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open

from .adapter_inputs import LORA_MAX, LORA_MIN, AdapterError, parse_prompt_loras, short, stamp
from .models import FAMILY_LABELS as _FAMILY, PICKLE_SUFFIXES, refuse_pickle

# Keys that only LoRA-style files contain (peft, trainer, LoHa and LoKr layouts).
_LORA_KEY = re.compile(r"lora_(down|up|A|B)\b|\.lora\.(down|up)\.|hada_w|lokr_w|\.alpha$")


@dataclass
class LoraSpec:
    """A LoRA by name (its path under the LoRA folder, without .safetensors) and its weight."""

    name: str
    weight: float = 1.0


@dataclass
class _LoadedLora:
    adapter: str
    path: Path
    stamp: tuple[int, int]


def adapter_name(name: str) -> str:
    """A valid, unique peft adapter name for a LoRA name (module names allow only [A-Za-z0-9_])."""
    safe = re.sub(r"\W", "_", name, flags=re.ASCII).strip("_") or "lora"
    if safe != name:
        # Two names that sanitise alike ('a-b', 'a b') must not share one adapter slot.
        safe += "_" + hashlib.sha1(name.encode()).hexdigest()[:6]
    # A prefix keeps names like 'weight' or '0' from clashing with module attributes.
    return "l_" + safe


# -- the LoRAs of one pipeline ---------------------------------------------------------------


class Loras:
    """The LoRAs loaded into one base pipeline, found by relative name under `lora_dir`.

    family: the model family, named in the messages of a LoRA made for another kind of model.
    """

    def __init__(self, base_pipe, lora_dir, family: str):
        self.base = base_pipe
        self.lora_dir = Path(lora_dir)
        self.family = family
        self._loras: dict[str, _LoadedLora] = {}  # LoRA name -> loaded adapter
        self._active: tuple | None = None  # ((adapter, weight), ...) last given to set_adapters
        self.load_calls = 0  # LoRA files read; tests and logs use it to see reloads
        # Whether LoRA layers may exist; saves walking every module on each plain job.
        self._peft_touched = True

    def available(self) -> dict[str, Path]:
        """LoRA name -> file, for every .safetensors under the LoRA folder (names sorted)."""
        found: dict[str, Path] = {}
        if self.lora_dir.is_dir():
            for path in sorted(self.lora_dir.rglob("*.safetensors")):
                if path.is_file():
                    found[path.relative_to(self.lora_dir).with_suffix("").as_posix()] = path
        return found

    def loaded(self) -> dict[str, float]:
        """LoRA name -> weight of the LoRAs applied to the pipeline now."""
        weights = dict(self._active or ())
        return {name: weights.get(entry.adapter, 0.0) for name, entry in self._loras.items()}

    def resolve(self, name: str) -> Path:
        """The file for a LoRA name: a relative name under the LoRA folder (with or without
        .safetensors; a bare file name also matches in a subfolder), or a path to a file."""
        name = name.strip()
        direct = Path(name).expanduser()
        refuse_pickle(direct, lambda text: AdapterError(text, "lora"))
        if direct.suffix.lower() == ".safetensors" and direct.is_absolute() and direct.is_file():
            return direct
        available = self.available()
        key = name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name
        if key in available:
            return available[key]
        by_stem = [p for n, p in available.items() if n.rsplit("/", 1)[-1] == key]
        if len(by_stem) == 1:
            return by_stem[0]
        for suffix in PICKLE_SUFFIXES:
            if (self.lora_dir / (key + suffix)).is_file():
                refuse_pickle(self.lora_dir / (key + suffix), lambda text: AdapterError(
                    f"LoRA {name!r}: {text}", "lora"))
        if len(by_stem) > 1:
            names = ", ".join(n for n in available if n.rsplit("/", 1)[-1] == key)
            raise AdapterError(f"LoRA name {name!r} is ambiguous; write one of: {names}", "lora")
        listing = ", ".join(available) if available else f"none (put .safetensors files in {self.lora_dir})"
        raise AdapterError(f"unknown LoRA {name!r}; available LoRAs: {listing}", "lora")

    def parse_prompt(self, prompt: str) -> tuple[str, list[tuple[str, float]]]:
        """parse_prompt_loras, then check every name exists (AdapterError lists the LoRAs)."""
        clean, loras = parse_prompt_loras(prompt)
        for name, _weight in loras:
            self.resolve(name)
        return clean, loras

    def apply(self, loras: Iterable) -> None:
        """Make exactly these LoRAs active: [(name, weight)], [LoraSpec] or {name: weight}."""
        wanted = normalise_loras(loras)
        paths = {name: self.resolve(name) for name, _ in wanted}
        # A file replaced on disk (same name, new content) must be read again.
        for name, path in paths.items():
            entry = self._loras.get(name)
            if entry is not None and (entry.path != path or entry.stamp != stamp(path)):
                self._delete_lora(name)
        # New LoRAs load before anything is removed, so a file that fails leaves the previous
        # job's LoRAs exactly as they were.
        previous = self._active
        for name, path in paths.items():
            if name not in self._loras:
                try:
                    self._load_lora(name, path)
                except AdapterError:
                    self._restore(previous)
                    raise
        for name in [n for n in self._loras if n not in paths]:
            self._delete_lora(name)
        if not wanted:
            if self._peft_touched and self.has_peft_layers():
                # Removes the LoRA layers themselves, so the modules are the base ones again.
                self.base.unload_lora_weights()
            self._loras.clear()
            self._active = None
            self._peft_touched = False
            return
        active = tuple((self._loras[name].adapter, float(weight)) for name, weight in wanted)
        if active != self._active:
            self.base.set_adapters([a for a, _ in active], adapter_weights=[w for _, w in active])
            self._active = active

    def _restore(self, previous) -> None:
        if previous and all(a in self._adapters_present() for a, _ in previous):
            self.base.set_adapters([a for a, _ in previous], adapter_weights=[w for _, w in previous])
            self._active = previous
        elif self._loras and self._active is None:
            # Loaded but never activated in this state: leave them all off until the next job.
            self.base.set_adapters([e.adapter for e in self._loras.values()],
                                   adapter_weights=[0.0] * len(self._loras))
            self._active = tuple((e.adapter, 0.0) for e in self._loras.values())

    def has_peft_layers(self) -> bool:
        for component in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(self.base, component, None)
            if module is not None and any(isinstance(m, BaseTunerLayer) for m in module.modules()):
                return True
        return False

    def _delete_lora(self, name: str) -> None:
        entry = self._loras.pop(name)
        self.base.delete_adapters([entry.adapter])
        self._active = None

    def _adapters_present(self) -> set[str]:
        try:
            lists = self.base.get_list_adapters()
        except Exception:  # noqa: BLE001 - no peft state at all
            return set()
        return {a for names in lists.values() for a in names}

    def _load_lora(self, name: str, path: Path) -> None:
        check_lora_file(path)
        adapter = adapter_name(name)
        before = self._adapters_present()
        self.load_calls += 1
        self._peft_touched = True
        try:
            # Folder plus file name: the form every library version takes, offline too.
            self.base.load_lora_weights(str(path.parent), weight_name=path.name,
                                        adapter_name=adapter)
        except Exception as exc:  # noqa: BLE001 - any failure must leave the pipeline clean
            self._undo_lora(adapter, before)
            raise AdapterError(lora_failure(path, exc, self.family), "lora") from exc
        if adapter not in self._adapters_present():
            self._undo_lora(adapter, before)
            raise AdapterError(f"{path.name} matched no layer of this model; it is probably a "
                               f"LoRA for another kind of model (this one is {_FAMILY[self.family]})",
                               "lora")
        self._loras[name] = _LoadedLora(adapter, path, stamp(path))
        self._active = None

    def _undo_lora(self, adapter: str, before: set[str]) -> None:
        if adapter in self._adapters_present():
            try:
                self.base.delete_adapters([adapter])
            except Exception:  # noqa: BLE001
                pass
        if not before and self.has_peft_layers():
            # Nothing was loaded before: drop the (now empty) LoRA layers entirely.
            self.base.unload_lora_weights()
        # A failed load may have changed the active set; the next set_adapters restores it.
        self._active = None


# -- files and weights -----------------------------------------------------------------------


def normalise_loras(loras) -> list[tuple[str, float]]:
    """[(name, weight)] from any form a job gives (pairs, LoraSpec, names, a dict), each weight
    checked against the picker's range; a name given twice keeps its last weight."""
    if loras is None:
        return []
    if isinstance(loras, dict):
        loras = list(loras.items())
    out: dict[str, float] = {}
    for item in loras:
        if isinstance(item, LoraSpec):
            name, weight = item.name, item.weight
        elif isinstance(item, str):
            name, weight = item, 1.0
        else:
            name, weight = item
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise AdapterError(f"LoRA {name!r}: the weight must be a number (got {weight!r})",
                               "lora") from None
        if not LORA_MIN <= weight <= LORA_MAX:
            raise AdapterError(f"LoRA {name!r}: the weight must be from {LORA_MIN:g} to "
                               f"{LORA_MAX:g} (got {weight:g})", "lora")
        out[str(name).strip()] = weight
    return list(out.items())


def check_lora_file(path: Path) -> None:
    """Refuse files that are not readable safetensors LoRAs before touching the pipeline."""
    if path.suffix.lower() != ".safetensors":
        raise AdapterError(f"{path.name}: only .safetensors LoRAs are loaded", "lora")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path.name} is damaged or not a safetensors file ({short(exc)}); "
                           "download it again", "lora") from None
    if not keys:
        raise AdapterError(f"{path.name} is empty (no weights inside)", "lora")
    if not any(_LORA_KEY.search(k) for k in keys):
        raise AdapterError(
            f"{path.name} is not a LoRA (none of its {len(keys)} weights is a LoRA weight); "
            "full checkpoints belong in models/Stable-diffusion", "lora")


def lora_failure(path: Path, exc: BaseException, family: str) -> str:
    text = str(exc)
    if "size mismatch" in text or "shape" in text.lower():
        return (f"{path.name} does not fit this model: its layer sizes differ, so it was made for "
                f"another kind of model (this one is {_FAMILY[family]}); pick a LoRA trained for "
                f"{_FAMILY[family]}")
    if "Target modules" in text or "not found in the base model" in text:
        return (f"{path.name} names layers this model does not have; it is probably a LoRA for "
                f"another kind of model (this one is {_FAMILY[family]})")
    return f"could not load the LoRA {path.name}: {short(exc)}"
