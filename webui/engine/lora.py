"""LoRAs: the `<lora:name:weight>` prompt tags, the LoRA files under the LoRA folder, and
the LoRAs loaded into one pipeline (`Loras`).

A LoRA already loaded is never read again, a weight change is one `set_adapters`, and a LoRA
that fails to load leaves the previous job's LoRAs exactly as they were.

With the compiled UNet on, a job with one LoRA uses the *hot slot* instead: one adapter on the
UNet, padded to a reserved rank by the library's LoRA hotswap (`enable_lora_hotswap`), into which
each new LoRA is copied in place (`hotswap=True`) and whose weight is written into its scaling
tensors. Its tensors never change identity or shape, so the graphs compiled with the slot keep
serving every LoRA and every weight. A LoRA the slot cannot take (a text-encoder part, a rank
above the reserved one, layers the slot lacks) runs eager as a named adapter, and `why_eager`
says why. The slot stays until the model is unloaded; jobs without a LoRA switch it off.

The tag parser itself (`parse_prompt_loras`) lives in adapter_inputs.py, which the front doors
import without torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError, safe_open

from .adapter_inputs import LORA_MAX, LORA_MIN, AdapterError, parse_prompt_loras, short, stamp
from .models import FAMILY_LABELS as _FAMILY, PICKLE_SUFFIXES, refuse_pickle

# Keys that only LoRA-style files contain (peft, trainer, LoHa and LoKr layouts).
_LORA_KEY = re.compile(r"lora_(down|up|A|B)\b|\.lora\.(down|up)\.|hada_w|lokr_w|\.alpha$")
# For the hot slot: a text-encoder part (trainer 'lora_te', 'lora_te1/2', diffusers
# 'text_encoder', 'te_'), LoHa/LoKr factors, and the down (A) matrices whose first dimension is
# the rank.
_TEXT_ENCODER_KEY = re.compile(r"^(lora_te\d?_|text_encoder|te\d?[._])")
_NOT_LORA_KEY = re.compile(r"hada_w|lokr_w")
_DOWN_KEY = re.compile(r"lora_down\.weight$|lora_A(\.[^.]+)?\.weight$|\.lora\.down\.weight$")


class _NotHot(Exception):
    """The hot slot could not take a LoRA after all; the job goes the named-adapter way."""


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


# The hot slot's adapter name ('l_' names are the named adapters').
HOT = "hot"


@dataclass
class _HotSlot:
    """The LoRA in the hot slot and each LoRA layer's scaling at weight 1 (the library writes
    alpha / rank there on each swap; a weight scales it)."""

    name: str
    path: Path
    stamp: tuple[int, int]
    base: dict  # LoRA layer -> {adapter scaling at weight 1}
    generation: int  # a new slot (its tensors are new) gets a new number


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

    def __init__(self, base_pipe, lora_dir, family: str, hot_rank: int = 0):
        self.base = base_pipe
        self.lora_dir = Path(lora_dir)
        self.family = family
        # The rank reserved in the hot slot; 0: no hot slot, every LoRA is a named adapter.
        self.hot_rank = hot_rank
        self._hot: _HotSlot | None = None
        self._generations = 0
        # LoRA file (path, stamp) -> why the slot cannot take it ('' when it can), found once:
        # a file is read for its keys (and checked) on its first hot job only.
        self._hot_verdict: dict[tuple, str] = {}
        self.hot_weight: float | None = None  # the slot's weight in this job; None: slot off
        self.why_eager = ""  # why this job's LoRAs are not in the slot ('' when they are, or none)
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
        out = {name: weights.get(entry.adapter, 0.0) for name, entry in self._loras.items()}
        if self._hot is not None and self.hot_weight is not None:
            out[self._hot.name] = self.hot_weight
        return out

    @property
    def hot_generation(self) -> int:
        """The slot's number while this job uses it, else 0: what a compiled graph is keyed on."""
        return self._hot.generation if self._hot is not None and self.hot_weight is not None \
            else 0

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
        self.why_eager = ""
        if self.hot_rank and len(wanted) == 1:
            (name, weight), = wanted
            self.why_eager = self._hot_misfit(name, paths[name])
            if not self.why_eager:
                try:
                    self._apply_hot(name, paths[name], weight)
                    return
                except _NotHot:
                    self.why_eager = self._hot_verdict[(paths[name], stamp(paths[name]))]
        elif self.hot_rank and wanted:
            self.why_eager = "LoRA jobs with more than one LoRA run eager (the compiled graphs " \
                "take one at a time)"
        self._slot_off()
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
            if self._hot is not None:
                # The slot stays for the next LoRA; deleting named adapters may have made it
                # the active one again, so it is switched off now.
                self._unet_layers_enabled(False)
            elif self._peft_touched and self.has_peft_layers():
                # Removes the LoRA layers themselves, so the modules are the base ones again.
                self.base.unload_lora_weights()
            self._loras.clear()
            self._active = None
            self._peft_touched = False
            return
        active = tuple((self._loras[name].adapter, float(weight)) for name, weight in wanted)
        if active != self._active:
            if self._hot is not None:
                # Switching the slot off disabled the UNet's LoRA layers; set_adapters picks
                # the active ones but does not enable them.
                self._unet_layers_enabled(True)
            self.base.set_adapters([a for a, _ in active], adapter_weights=[w for _, w in active])
            self._active = active

    # -- the hot slot ------------------------------------------------------------------------
    def _hot_misfit(self, name: str, path: Path) -> str:
        """Why the slot cannot take this LoRA file ('' when it can), read from its keys."""
        key = (path, stamp(path))
        if key in self._hot_verdict:
            return self._hot_verdict[key]
        check_lora_file(path)
        why = ""
        with safe_open(str(path), framework="pt") as f:
            rank = 0
            for k in f.keys():
                if _TEXT_ENCODER_KEY.search(k):
                    why = f"LoRA {name!r} also changes the text encoder, which hotswap cannot serve"
                    break
                if _NOT_LORA_KEY.search(k):
                    why = f"LoRA {name!r} is not a plain LoRA (LoHa/LoKr), which hotswap cannot serve"
                    break
                if _DOWN_KEY.search(k):
                    rank = max(rank, f.get_slice(k).get_shape()[0])
        if not why and rank > self.hot_rank:
            why = (f"LoRA {name!r} has rank {rank}, above the {self.hot_rank} reserved for "
                   "hotswap (--lora-rank)")
        self._hot_verdict[key] = why
        return why

    def _apply_hot(self, name: str, path: Path, weight: float) -> None:
        """This one LoRA in the hot slot at this weight; named adapters removed."""
        for other in list(self._loras):
            self._delete_lora(other)
        slot = self._hot
        unet = self.base.unet
        if slot is None or (slot.path, slot.stamp) != (path, stamp(path)):
            # (the file was checked by _hot_misfit, which every hot job passes first)
            self.load_calls += 1
            self._peft_touched = True
            if slot is None:
                if self.has_peft_layers():
                    self.base.unload_lora_weights()  # leftovers of a failed load
                unet.enable_lora_hotswap(target_rank=self.hot_rank)
            try:
                self.base.load_lora_weights(str(path.parent), weight_name=path.name,
                                            adapter_name=HOT, hotswap=slot is not None)
            except Exception as exc:  # noqa: BLE001 - the job runs eager with a named adapter
                unet._prepare_lora_hotswap_kwargs = None
                self._hot_verdict[(path, stamp(path))] = (
                    f"LoRA {name!r} could not be hot-swapped ({short(exc)})")
                self._drop_slot()
                raise _NotHot from exc
            if HOT not in self._adapters_present():
                self._drop_slot()
                raise AdapterError(f"{path.name} matched no layer of this model; it is probably "
                                   "a LoRA for another kind of model (this one is "
                                   f"{_FAMILY[self.family]})", "lora")
            if slot is None:
                self._generations += 1
            layers = [m for m in unet.modules() if isinstance(m, LoraLayer) and HOT in m.scaling]
            self._hot = _HotSlot(name, path, stamp(path),
                                 {m: float(m.scaling[HOT]) for m in layers},
                                 slot.generation if slot is not None else self._generations)
        self._unet_layers_enabled(True, [HOT])
        for layer, scaling in self._hot.base.items():
            # In place: the compiled graphs read this very tensor.
            layer.scaling[HOT].fill_(scaling * weight)
        self.hot_weight = weight

    def _slot_off(self) -> None:
        """A job without the slot: the UNet's LoRA layers disabled, so the eager UNet skips
        the slot (a named adapter's job enables them again with its own adapters)."""
        if self._hot is not None:
            self._unet_layers_enabled(False)
        self.hot_weight = None

    def _unet_layers_enabled(self, enabled: bool, adapters: list[str] | None = None) -> None:
        """Enable (with `adapters` active, else the ones active now) or disable the UNet's
        LoRA layers; their weights stay frozen (requires_grad is part of what a graph checks)."""
        for module in self.base.unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(enabled)
                if enabled:
                    module.set_adapter(adapters or module.active_adapters, inference_mode=True)
        self._active = None

    def _drop_slot(self) -> None:
        """The slot is gone (a failed swap removes it in the library): start afresh next time."""
        self._hot = None
        self.hot_weight = None
        if HOT in self._adapters_present():
            self.base.delete_adapters([HOT])
        if self.has_peft_layers() and not self._loras:
            self.base.unload_lora_weights()

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
