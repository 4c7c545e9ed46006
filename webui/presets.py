"""Presets: named sets of generation settings, stored as JSON files.

Two folders are read: the shipped `presets/` (read-only, shared by everyone) and the user presets
folder (default `user-presets/`; with auth on, each user gets `<folder>/<safe user name>/`).

A preset file is one flat JSON object:

    {
      "schema_version": 1,
      "name": "Van Gogh style",              display name; the file name is its slug
      "description": "...",                  optional
      "band": "medium",                      optional: subtle / medium / overhaul (the guide's
                                             denoising bands), used for gentle hints
      "prompt_template": "{prompt}, ...",    optional: wraps the user's prompt; holds {prompt} once
      "strength": 0.55, "guidance_scale": 7, ...   any GenerationParams field except `prompt`
    }

In `negative_prompt`, the placeholder `{standard_negative}` stands for the guide's standard
negative prompt (params.STANDARD_NEGATIVE), so presets follow that list if it is ever revised;
saving writes the placeholder back wherever the full list appears.

Settings are validated by GenerationParams itself (strict JSON types), so a field added there is
accepted in presets with no change here. This module never imports gradio or torch.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ValidationError

from . import params as P
from .files import safe_user_dir_name, write_atomic

SCHEMA_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_USER_DIR = Path("user-presets")

PROMPT_PLACEHOLDER = "{prompt}"
STANDARD_NEGATIVE_PLACEHOLDER = "{standard_negative}"

MAX_NAME_LENGTH = 80
MAX_DESCRIPTION_LENGTH = 2000
MAX_FILE_BYTES = 1_000_000
# Presets one user may keep: enough for any artist's styles.csv, few enough that a visitor of a
# shared studio cannot fill its disk (1 MB each at most).
MAX_USER_PRESETS = 1000

META_KEYS = ("schema_version", "name", "description", "band", "prompt_template")
# The prompt is the artist's own text; a preset shapes it through prompt_template instead.
NOT_IN_PRESETS = {"prompt": "a preset does not hold the prompt; use prompt_template with "
                            "{prompt} to wrap the artist's prompt"}

# Names other SD tools use for our fields: only to suggest the right key in an error.
_KEY_HINTS = {"cfg": "guidance_scale", "cfg_scale": "guidance_scale", "sampler": "scheduler",
              "sampler_name": "scheduler", "denoising_strength": "strength",
              "denoise": "strength", "negative": "negative_prompt", "batch": "batch_size",
              "n_iter": "batch_count", "sampling_steps": "steps", "template": "prompt_template"}

# The guide's CFG advice: ~7 to start, 9-10 when the prompt is ignored, 5-6 when over-baked.
CFG_RANGES = {"loose": (5.0, 6.0), "balanced": (6.0, 8.0), "strict": (9.0, 10.0)}

# Names Windows refuses as file names, whatever the extension.
RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", "CLOCK$", "CONIN$", "CONOUT$",
                  *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}

OnConflict = Literal["error", "rename", "overwrite", "skip"]


class PresetError(ValueError):
    """A preset is invalid or an operation was refused; `file` and `field` say where."""

    def __init__(self, file: str | None, field: str | None, message: str):
        super().__init__(message)
        self.file = file
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


class PresetNotFound(PresetError):
    """No preset of that name is visible to this store."""


class PresetExists(PresetError):
    """The name is taken (by a user preset without overwrite, or by a shipped preset)."""


class PresetReadOnly(PresetError):
    """Shipped presets cannot be changed or deleted."""


@dataclass(frozen=True)
class Preset:
    """A validated preset. `settings` holds GenerationParams fields with normalised values (the
    negative prompt's placeholder already expanded)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    band: str | None = None
    prompt_template: str | None = None
    shipped: bool = False
    path: Path | None = field(default=None, compare=False)

    @property
    def read_only(self) -> bool:
        return self.shipped

    @property
    def slug(self) -> str:
        return slugify(self.name)

    def to_dict(self) -> dict[str, Any]:
        """The file form: schema version first, placeholders restored."""
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "name": self.name}
        if self.description:
            data["description"] = self.description
        if self.band:
            data["band"] = self.band
        if self.prompt_template is not None:
            data["prompt_template"] = self.prompt_template
        for key in P.GenerationParams.model_fields:
            if key in self.settings:
                value = self.settings[key]
                if key == "negative_prompt":
                    value = value.replace(P.STANDARD_NEGATIVE, STANDARD_NEGATIVE_PLACEHOLDER)
                elif isinstance(value, list):  # units (LoRAs, ControlNets) as plain objects
                    value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v
                             for v in value]
                data[key] = value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Broken:
    """A preset file that could not be read; `reason` is one line naming the file and field."""

    path: Path
    reason: str
    shipped: bool = False


@dataclass(frozen=True)
class Listing:
    presets: list[Preset]
    broken: list[Broken]

    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def find(self, name: str) -> Preset | None:
        key, slug = name.strip().casefold(), slugify(name)
        for preset in self.presets:
            if preset.name.casefold() == key or preset.slug == slug:
                return preset
        return None


# -- names -----------------------------------------------------------------------------------
def slugify(name: str) -> str:
    """The file stem for a display name: 'Balanced — start here' -> 'balanced-start-here'."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    slug = re.sub(r"[^\w]+|_+", "-", plain).strip("-")
    if not slug:
        # Names made only of symbols still need a stable, safe file name.
        slug = "preset-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return slug[:MAX_NAME_LENGTH].strip("-")


def check_name(name: Any, file: str | None = None) -> str:
    """The name, stripped, or PresetError(field 'name') when it could not be a safe file name."""
    if not isinstance(name, str):
        raise PresetError(file, "name", f"name must be text (got {type(name).__name__})")
    name = name.strip()
    if not name:
        raise PresetError(file, "name", "name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise PresetError(file, "name", f"name is too long (at most {MAX_NAME_LENGTH} characters)")
    if "/" in name or "\\" in name or any(unicodedata.category(c) == "Cc" for c in name):
        raise PresetError(file, "name", f"name must not contain path separators or control "
                          f"characters (got {name!r})")
    if name.startswith(".") or name.endswith("."):
        raise PresetError(file, "name", f"name must not start or end with a dot (got {name!r})")
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise PresetError(file, "name", f"name must not be a path (got {name!r})")
    if name.split(".")[0].strip().upper() in RESERVED_NAMES or slugify(name).upper() in RESERVED_NAMES:
        raise PresetError(file, "name", f"{name!r} is a reserved device name; choose another")
    return name


# -- validation ------------------------------------------------------------------------------
def _settings_keys() -> list[str]:
    return [k for k in P.GenerationParams.model_fields if k not in NOT_IN_PRESETS]


def _reject_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def parse(data: bytes | str, file: str = "preset") -> Preset:
    """A Preset from JSON text, or PresetError naming `file` and the field."""
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise PresetError(file, None, f"file is too large (over {MAX_FILE_BYTES} bytes)")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PresetError(file, None, "file is not UTF-8 text") from None
    try:
        raw = json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PresetError(file, None, f"not valid JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from None
    except ValueError as exc:
        raise PresetError(file, None, f"not valid JSON: {exc}") from None
    except RecursionError:
        # The decoder recurses per level: a file nested thousands deep is no preset.
        raise PresetError(file, None, "not valid JSON: nested too deeply") from None
    return from_dict(raw, file)


def from_dict(raw: Any, file: str = "preset", shipped: bool = False,
              path: Path | None = None) -> Preset:
    """Validate a decoded preset object; PresetError names `file` and the first bad field."""
    if not isinstance(raw, dict):
        raise PresetError(file, None, "a preset must be a JSON object ({...})")
    # The version comes first: a newer file's unknown keys are explained by its version.
    version = raw.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PresetError(file, "schema_version",
                          f"schema_version must be a whole number from 1 (got {version!r})")
    if version > SCHEMA_VERSION:
        raise PresetError(file, "schema_version",
                          f"schema_version {version} was written by a newer version of the studio "
                          f"(this one reads up to {SCHEMA_VERSION}); update the studio to use it")
    known = _settings_keys()
    for key in raw:
        if key in NOT_IN_PRESETS:
            raise PresetError(file, key, f"{key}: {NOT_IN_PRESETS[key]}")
        if key not in META_KEYS and key not in known:
            close = ([_KEY_HINTS[key]] if key in _KEY_HINTS else
                     difflib.get_close_matches(str(key), [*META_KEYS, *known], n=1))
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PresetError(file, str(key), f"unknown key {key!r}{hint}")
    if "name" not in raw:
        raise PresetError(file, "name", "name is missing")
    name = check_name(raw["name"], file)
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
        raise PresetError(file, "description", "description must be text of at most "
                          f"{MAX_DESCRIPTION_LENGTH} characters")
    band = raw.get("band")
    if band is not None and band not in P.BANDS:
        raise PresetError(file, "band", f"band must be one of: {', '.join(P.BANDS)} "
                          f"(got {band!r})")
    template = raw.get("prompt_template")
    if template is not None:
        check_template(template, file)
    settings = {k: raw[k] for k in known if k in raw}
    return Preset(name=name, settings=validate_settings(settings, file), description=description,
                  band=band, prompt_template=template, shipped=shipped, path=path)


def check_template(template: Any, file: str | None = None) -> str:
    if not isinstance(template, str):
        raise PresetError(file, "prompt_template", "prompt_template must be text "
                          f"(got {type(template).__name__})")
    count = template.count(PROMPT_PLACEHOLDER)
    if count != 1:
        raise PresetError(file, "prompt_template", "prompt_template must contain {prompt} exactly "
                          f"once, where the artist's prompt goes (found {count})")
    if len(template) > 20_000:
        raise PresetError(file, "prompt_template", "prompt_template is too long")
    return template


def validate_settings(settings: dict[str, Any], file: str = "preset") -> dict[str, Any]:
    """The named settings, checked and normalised by GenerationParams (strict JSON types, so
    "0.5" or true is not taken for a number)."""
    values = dict(settings)
    if isinstance(values.get("negative_prompt"), str):
        values["negative_prompt"] = expand_negative(values["negative_prompt"])
    try:
        checked = P.GenerationParams.model_validate_json(json.dumps(values), strict=True)
    except ValidationError as exc:
        where, message = P.explain(exc.errors()[0])
        raise PresetError(file, where, message) from None
    except (TypeError, ValueError) as exc:
        raise PresetError(file, None, f"settings are not plain JSON values: {exc}") from None
    return {k: getattr(checked, k) for k in P.GenerationParams.model_fields if k in values}


def expand_negative(text: str) -> str:
    return text.replace(STANDARD_NEGATIVE_PLACEHOLDER, P.STANDARD_NEGATIVE)


# -- using presets ---------------------------------------------------------------------------
def wrap_prompt(preset: Preset, prompt: str) -> str:
    """The artist's prompt inside the preset's template ({prompt} replaced, other braces kept)."""
    if preset.prompt_template is None:
        return prompt
    text = preset.prompt_template.replace(PROMPT_PLACEHOLDER, prompt)
    if not prompt.strip():
        # An empty prompt must not leave the template's joining commas dangling.
        text = text.strip().strip(",").strip()
    return text


def apply(preset: Preset, params: P.GenerationParams, prompt: str | None = None
          ) -> P.GenerationParams:
    """`params` with the fields the preset names replaced; the others stay as they are.

    `prompt` is the artist's own prompt: it is wrapped in the preset's template and becomes the
    prompt. With None the prompt is left untouched (it may already be wrapped).
    """
    changes = dict(preset.settings)
    if prompt is not None:
        changes["prompt"] = wrap_prompt(preset, prompt)
    return params.replace(**changes)


def cfg_range(guidance_scale: float) -> tuple[float, float]:
    """The guide's CFG range that holds a preset's CFG value; between the guide's ranges, one
    either side of it, so a hint needs a real departure."""
    for lo, hi in CFG_RANGES.values():
        if lo <= guidance_scale <= hi:
            return lo, hi
    return max(0.0, guidance_scale - 1), guidance_scale + 1


def _fmt(value: float) -> str:
    return f"{value:g}"


def band_hint(preset: Preset | None, params: P.GenerationParams) -> str | None:
    """One gentle line when strength or CFG has left the preset's band or range, else None."""
    if preset is None:
        return None
    tuned: list[str] = []
    have: list[str] = []
    band = preset.band
    if band is None and "strength" in preset.settings:
        derived = P.band_of(preset.settings["strength"])
        band = derived if derived in P.BANDS else None
    if band is not None:
        lo, hi = P.BANDS[band]
        if not lo - 1e-9 <= params.strength <= hi + 1e-9:
            tuned.append(f"{band} strength ({_fmt(lo)}–{_fmt(hi)})")
            have.append(f"strength {_fmt(params.strength)}")
    if "guidance_scale" in preset.settings:
        lo, hi = cfg_range(preset.settings["guidance_scale"])
        if not lo - 1e-9 <= params.guidance_scale <= hi + 1e-9:
            tuned.append(f"CFG {_fmt(lo)}–{_fmt(hi)}")
            have.append(f"CFG {_fmt(params.guidance_scale)}")
    if not tuned:
        return None
    return (f"“{preset.name}” is tuned for {' and '.join(tuned)}; you have {' and '.join(have)} "
            "— fine if that is what you want.")


def from_params(name: str, params: P.GenerationParams, *, description: str = "",
                band: str | None = None, prompt_template: str | None = None,
                fields: Iterable[str] | None = None) -> Preset:
    """A preset from the studio's current settings (save-as).

    By default every setting except the prompt and the seed is kept: a preset is a recipe, and a
    seed belongs to one picture. An empty `model` (the studio's current one) is left out so the
    preset does not switch models. `band` defaults to the band of the current strength.
    """
    name = check_name(name)
    if fields is None:
        fields = [k for k in _settings_keys() if k != "seed"]
        if not params.model:
            fields.remove("model")
    dumped = params.model_dump(mode="json")
    settings = {}
    for key in fields:
        if key in NOT_IN_PRESETS or key not in dumped:
            raise PresetError(None, key, f"{key!r} cannot be saved in a preset")
        settings[key] = dumped[key]
    if prompt_template is not None:
        check_template(prompt_template)
    if band is None and "strength" in settings:
        derived = P.band_of(settings["strength"])
        band = derived if derived in P.BANDS else None
    meta = {"name": name, "description": description, "band": band,
            "prompt_template": prompt_template}
    # None is a real setting (width None keeps the init size); only absent meta is dropped.
    return from_dict({**{k: v for k, v in meta.items() if v is not None}, **settings}, file=name)


# -- the store -------------------------------------------------------------------------------
class PresetStore:
    """Shipped presets plus one user's presets (or the shared user folder when auth is off).

    Every call reads the folders afresh, so files added by hand or by another process show up
    without a restart; a broken file is listed in `list().broken` and never raises.
    """

    def __init__(self, user_dir: str | os.PathLike = DEFAULT_USER_DIR,
                 shipped_dir: str | os.PathLike | None = SHIPPED_DIR, user: str | None = None,
                 max_presets: int = MAX_USER_PRESETS):
        self.root = Path(user_dir)
        self.shipped_dir = Path(shipped_dir) if shipped_dir is not None else None
        self.user = user
        self.user_dir = self.root / safe_user_dir_name(user) if user is not None else self.root
        self.max_presets = max_presets  # user presets (broken files too) a new one may join

    def for_user(self, user: str | None) -> "PresetStore":
        """The same folders seen by `user` (None: the shared folder, for auth off)."""
        return PresetStore(self.root, self.shipped_dir, user, self.max_presets)

    # reading
    def _scan(self, folder: Path | None, shipped: bool) -> tuple[list[Preset], list[Broken]]:
        presets: list[Preset] = []
        broken: list[Broken] = []
        if folder is None or not folder.is_dir():
            return presets, broken
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue  # temp files of writes in progress (or of a crashed one)
            try:
                if path.is_symlink() and not shipped:
                    raise PresetError(path.name, None, "links are not followed in the user "
                                      "presets folder")
                if not path.is_file():
                    continue
                if path.stat().st_size > MAX_FILE_BYTES:
                    raise PresetError(path.name, None, "file is too large")
                preset = parse(path.read_bytes(), path.name)
                presets.append(replace(preset, shipped=shipped, path=path))
            except PresetError as exc:
                broken.append(Broken(path, str(exc), shipped))
            except OSError as exc:
                broken.append(Broken(path, f"{path.name}: cannot be read ({exc.strerror})", shipped))
        return presets, broken

    def list(self) -> Listing:
        """Shipped presets, then this user's, each sorted by name; broken files with reasons."""
        shipped, broken = self._scan(self.shipped_dir, True)
        shipped, dupes = _dedupe(shipped, [])
        broken += dupes
        mine, bad = self._scan(self.user_dir, False)
        broken += bad
        mine, dupes = _dedupe(mine, shipped)
        broken += dupes
        key = lambda p: p.name.casefold()  # noqa: E731
        return Listing(sorted(shipped, key=key) + sorted(mine, key=key), broken)

    def names(self) -> list[str]:
        return self.list().names()

    def get(self, name: str) -> Preset:
        listing = self.list()
        preset = listing.find(name)
        if preset is not None:
            return preset
        for item in listing.broken:
            if item.path.stem == slugify(name):
                raise PresetError(item.path.name, None, f"preset {name!r} is broken: {item.reason}")
        known = ", ".join(repr(n) for n in listing.names()) or "none"
        raise PresetNotFound(None, "name", f"no preset named {name!r} (available: {known})")

    # writing
    def save(self, preset: Preset, overwrite: bool = False,
             listing: Listing | None = None) -> Preset:
        """Write a user preset; refuses a shipped preset's name, and an existing user preset's
        name unless `overwrite`. listing: this store's list(), kept up to date with what is
        saved, for a caller saving many (each save would read every preset file again)."""
        name = check_name(preset.name)
        listing = listing if listing is not None else self.list()
        existing = listing.find(name)
        shipped_stems = {b.path.stem for b in listing.broken if b.shipped}
        if (existing is not None and existing.shipped) or slugify(name) in shipped_stems:
            raise PresetExists(None, "name", f"“{name}” is a shipped preset and cannot be "
                               "replaced; save under a new name")
        if existing is not None and not overwrite:
            raise PresetExists(None, "name", f"a preset named “{existing.name}” already exists; "
                               "choose overwrite to replace it")
        if existing is None:
            held = sum(not p.shipped for p in listing.presets) + sum(
                not b.shipped for b in listing.broken)
            if held >= self.max_presets:
                raise PresetError(None, "name", f"you have {held} presets, the most this "
                                  f"studio keeps for one user ({self.max_presets}); delete some "
                                  "to save new ones")
        path = existing.path if existing is not None and existing.path else (
            self.user_dir / f"{slugify(name)}.json")
        saved = replace(preset, name=name, shipped=False, path=path)
        try:
            write_atomic(path, saved.to_json().encode("utf-8"), overwrite=overwrite)
        except FileExistsError:
            raise PresetExists(None, "name", f"a preset named “{name}” already exists; choose "
                               "overwrite to replace it") from None
        if existing is not None:
            listing.presets.remove(existing)
        listing.presets.append(saved)
        return saved

    def save_params(self, name: str, params: P.GenerationParams, *, overwrite: bool = False,
                    **options: Any) -> Preset:
        """Save-as from the studio's settings; options as for from_params()."""
        return self.save(from_params(name, params, **options), overwrite=overwrite)

    def delete(self, name: str) -> None:
        """Delete a user preset; a broken user file can be deleted by its name or file stem."""
        listing = self.list()
        preset = listing.find(name)
        if preset is None:
            for item in listing.broken:
                if not item.shipped and item.path.parent == self.user_dir and (
                        item.path.stem in (slugify(name), name.strip())):
                    item.path.unlink(missing_ok=True)
                    return
            preset = self.get(name)  # raises the right error
        if preset.shipped:
            raise PresetReadOnly(None, "name", f"“{preset.name}” is a shipped preset and cannot "
                                 "be deleted")
        assert preset.path is not None and preset.path.parent == self.user_dir
        preset.path.unlink(missing_ok=True)

    def export(self, name: str) -> bytes:
        """One preset as a JSON file's bytes (shipped ones too)."""
        return self.get(name).to_json().encode("utf-8")

    def import_bytes(self, data: bytes, filename: str = "upload.json",
                     on_conflict: OnConflict = "error") -> Preset | None:
        """Validate an uploaded preset and save it as this user's.

        on_conflict, when the name is taken: 'error' raises PresetExists, 'rename' saves as
        'Name (2)', 'overwrite' replaces a user preset (a shipped one is never replaced:
        PresetExists), 'skip' returns None.
        """
        preset = parse(data, Path(filename).name or "upload.json")
        return self._save_new(replace(preset, shipped=False, path=None), on_conflict)

    def _save_new(self, preset: Preset, on_conflict: OnConflict,
                  listing: Listing | None = None) -> Preset | None:
        listing = listing if listing is not None else self.list()
        existing = listing.find(preset.name)
        if existing is None or on_conflict == "error":
            return self.save(preset, listing=listing)
        if on_conflict == "skip":
            return None
        if on_conflict == "overwrite":
            return self.save(preset, overwrite=True, listing=listing)
        return self.save(replace(preset, name=self.free_name(preset.name, listing)),
                         listing=listing)

    def free_name(self, name: str, listing: Listing | None = None) -> str:
        """`name`, or 'name (2)', 'name (3)', ... whichever is not taken."""
        listing = listing if listing is not None else self.list()
        taken = {p.slug for p in listing.presets} | {b.path.stem for b in listing.broken}
        base = re.sub(r" \(\d+\)$", "", name)
        candidate, n = name, 1
        while slugify(candidate) in taken:
            n += 1
            suffix = f" ({n})"
            candidate = base[: MAX_NAME_LENGTH - len(suffix)] + suffix
        return candidate


def _dedupe(presets: list[Preset], shipped: list[Preset]) -> tuple[list[Preset], list[Broken]]:
    """Keep the first preset per name; later ones, and user ones taking a shipped name, are
    listed as broken so the clash is visible instead of silently shadowed."""
    seen = {p.slug for p in shipped} | {p.name.casefold() for p in shipped}
    kept: list[Preset] = []
    broken: list[Broken] = []
    for preset in presets:
        if preset.slug in seen or preset.name.casefold() in seen:
            owner = "a shipped preset" if any(
                preset.slug == s.slug or preset.name.casefold() == s.name.casefold()
                for s in shipped) else "another file"
            broken.append(Broken(preset.path or Path(preset.name),
                                 f"{(preset.path or Path(preset.name)).name}: name: "
                                 f"“{preset.name}” is already used by {owner}", preset.shipped))
            continue
        seen |= {preset.slug, preset.name.casefold()}
        kept.append(preset)
    return kept, broken


# -- start-up and styles.csv -----------------------------------------------------------------
def startup_params(name: str, store: PresetStore) -> P.GenerationParams:
    """The studio's start-up values for `--preset NAME`: the defaults with the preset applied.

    Raises PresetError (PresetNotFound, or the reason the file is broken) for the launcher to
    report. The prompt stays empty: the template wraps the artist's prompt at generation time.
    """
    return apply(store.get(name), P.GenerationParams(), None)


@dataclass
class StylesImport:
    imported: list[Preset] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (style name, reason)


def styles_to_presets(data: bytes | str, file: str = "styles.csv"
                      ) -> tuple[list[Preset], list[tuple[str, str]]]:
    """Presets from a styles.csv of other SD tools (columns name, prompt, negative_prompt).

    A style prompt holding {prompt} becomes the template as is; otherwise it is appended after
    the artist's prompt with ", ", which is how those tools apply such styles.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PresetError(file, None, "file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(data.removeprefix("\ufeff"), newline=""))
    columns = [c.strip().casefold() for c in reader.fieldnames or []]
    if "name" not in columns:
        raise PresetError(file, "name", "styles file needs a header row with a 'name' column "
                          "(and 'prompt', 'negative_prompt')")
    presets: list[Preset] = []
    skipped: list[tuple[str, str]] = []
    for row in reader:
        row = {(k or "").strip().casefold(): (v or "") for k, v in row.items() if isinstance(v, str)}
        name = row.get("name", "").strip()
        prompt = row.get("prompt", "").strip()
        negative = row.get("negative_prompt", "").strip()
        if not name:
            continue
        if not prompt and not negative:
            skipped.append((name, "the style has neither a prompt nor a negative prompt"))
            continue
        raw: dict[str, Any] = {"name": name, "description": f"Imported from {Path(file).name}"}
        if prompt:
            raw["prompt_template"] = (prompt if PROMPT_PLACEHOLDER in prompt
                                      else f"{PROMPT_PLACEHOLDER}, {prompt}")
        if negative:
            raw["negative_prompt"] = negative
        try:
            presets.append(from_dict(raw, file))
        except PresetError as exc:
            skipped.append((name, exc.message))
    return presets, skipped


def import_styles(data: bytes | str, store: PresetStore, file: str = "styles.csv",
                  on_conflict: OnConflict = "skip") -> StylesImport:
    """Save each style of a styles.csv as a user preset; names already taken follow
    `on_conflict` (default 'skip', so importing the same file twice adds nothing)."""
    presets, skipped = styles_to_presets(data, file)
    report = StylesImport(skipped=list(skipped))
    # One listing for the whole file, updated as each style is saved: reading every preset
    # again for each style made an import of n styles take n² file reads.
    listing = store.list()
    for preset in presets:
        try:
            saved = store._save_new(preset, on_conflict, listing)
        except PresetError as exc:
            report.skipped.append((preset.name, exc.message))
            continue
        if saved is None:
            report.skipped.append((preset.name, "a preset with this name already exists"))
        else:
            report.imported.append(saved)
    return report

