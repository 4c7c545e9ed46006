"""The presets panel of the studio page: pick, load, save as, overwrite, delete, export and import
presets, and a gentle hint when strength or CFG leaves the loaded preset's band.

The panel knows nothing about the rest of the layout: app.py hands it `by_field` (GenerationParams
field name -> component) and the panel fills only the fields a preset names that have a component
there, so controls added to the page later take part without a change here. With auth on, every
handler works on the logged-in user's own presets (gr.Request.username); shipped presets are
shared by everyone.

Handlers live on PresetActions and take plain values (a dict of field values, a request with a
`username`), so tests drive them without a browser; `wire` adapts them to Gradio's positional
inputs and outputs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import gradio as gr
from pydantic import BaseModel

from .. import params as P
from .. import presets
from ..presets import Preset, PresetError, PresetExists, PresetStore
from .handlers import LABELS

# Never part of a preset saved from the page: the prompt is the artist's own text (a preset wraps
# it through its template instead), a seed belongs to one picture, and the model dropdown always
# holds a value, so saving it would pin every preset to today's checkpoint.
NOT_SAVED = ("prompt", "seed", "model")
HINT_FIELDS = ("strength", "guidance_scale")
# Settings whose control holds something other than the setting's own value: the IP-Adapter box
# holds a folder name the handlers resolve, and the output type is a choice per job, not a look.
NOT_ON_PAGE = ("ip_adapter", "output_type")
TITLE = "Presets"
# The LoRA picker and its weight table: two controls for the one `loras` setting, filled and read
# through the Studio (LoraControls) rather than by page_fields' one-control-one-setting rule.
LORA_CONTROLS = ("loras", "lora_weights")


class LoraControls(Protocol):
    """What the panel needs to fill and read the LoRA controls (handlers.Studio has both)."""

    def _fill_loras(self, loras: list[dict], fill: dict, warnings: list[str]) -> None: ...

    def _lora_list(self, names: Any, table: Any) -> list[dict]: ...


class _Keep:
    """An output the handler leaves as it is (gr.skip() once wired)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class Startup:
    """The `--preset` the page starts with: the preset and the studio's values with it applied
    (presets.startup_params)."""

    preset: Preset
    params: P.GenerationParams


def startup(name: str, store: PresetStore) -> Startup:
    """Startup for `--preset NAME`; PresetError (unknown or broken) for the launcher to report."""
    params = presets.startup_params(name, store)
    return Startup(store.get(name), params)


class View(NamedTuple):
    """What a panel handler changes outside the generation fields; KEEP leaves a part as it is.
    The order is the order of Panel.view_outputs()."""

    choices: Any = KEEP   # the preset dropdown (choices and value)
    broken: Any = KEEP    # Markdown listing unreadable files
    info: Any = KEEP      # Markdown describing the selected preset
    active: Any = KEEP    # State: the loaded preset (for hints and templates)
    pending: Any = KEEP   # State: the name waiting for "Confirm overwrite"
    confirm: Any = KEEP   # the confirm row (visibility)
    status: Any = KEEP    # Markdown: what the last action did
    hint: Any = KEEP      # Markdown: the band hint
    export: Any = KEEP    # File: the exported JSON
    name: Any = KEEP      # Textbox: the save-as name
    asking: Any = KEEP    # the "delete for good?" row (visibility)


class Loaded(NamedTuple):
    """A load's result: values for the page's fields (only those to change) and the view."""

    values: dict[str, Any]
    view: View


@dataclass
class Panel:
    """The panel's components, made by build() inside the page's presets area."""

    dropdown: gr.Dropdown
    refresh: gr.Button
    info: gr.Markdown
    load: gr.Button
    overwrite: gr.Button
    delete: gr.Button
    export: gr.Button
    upload: gr.UploadButton
    name: gr.Textbox
    save: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button
    export_file: gr.File
    status: gr.Markdown
    hint: gr.Markdown
    broken: gr.Markdown
    active: gr.State
    pending: gr.State
    store: PresetStore
    initial: Startup | None = None
    delete_row: gr.Row | None = None
    delete_confirm: gr.Button | None = None
    delete_cancel: gr.Button | None = None

    def view_outputs(self) -> list:
        return [self.dropdown, self.broken, self.info, self.active, self.pending,
                self.confirm_row, self.status, self.hint, self.export_file, self.name,
                self.delete_row]


# -- values between the page and GenerationParams ------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON-like form of a setting, which is what components hold (nested units are objects)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_page(name: str, value: Any) -> Any:
    """A setting as its component shows it."""
    if name in ("width", "height") and value is None:
        return 0  # the size boxes show "keep the init image's size" as 0
    return _plain(value)


def from_page(name: str, value: Any) -> Any:
    """A component's value as GenerationParams takes it."""
    if name in ("width", "height") and value in (None, "", 0, 0.0):
        return None
    if name == "seed" and value in (None, ""):
        return P.default("seed")
    if name in ("prompt", "negative_prompt", "model") and value is None:
        return ""
    return value


def page_fields(components: dict[str, Any]) -> dict[str, Any]:
    """The entries of `components` (name -> component) that show one GenerationParams setting's
    value as it is: lists of units (LoRAs, ControlNets) are spread over several controls, and
    names that are not settings (pictures, the mode) are none of the panel's business. LoRAs are
    taken in separately by `wire(..., loras=studio)` (LORA_CONTROLS); ControlNet units stay out
    of presets: a unit's control image belongs to one picture, like the seed."""
    fields = P.GenerationParams.model_fields
    kept = {}
    for name, component in components.items():
        if name not in fields or name in NOT_ON_PAGE:
            continue
        annotation = fields[name].annotation
        if getattr(annotation, "__origin__", None) is list or (
                isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        kept[name] = component
    return kept


def _label(field: str | None) -> str:
    if field == "name":
        return "Preset name"
    return LABELS.get(field or "", field or TITLE)


def _named(field: str | None, text: str) -> str:
    """`text` with its leading raw field name replaced by the page's label for it."""
    label = _label(field)
    if field and text.startswith(f"{field}: "):
        return f"{label}: {text[len(field) + 2:]}"
    if field and text.startswith(f"{field} "):
        return label + text[len(field):]
    return text


def _error(exc: PresetError | str, title: str = TITLE) -> gr.Error:
    # Expected refusals: a toast for the artist, no traceback in the server log.
    if isinstance(exc, PresetError):
        text = _named(exc.field, exc.message)
        return gr.Error(f"{exc.file}: {text}" if exc.file else text,
                        title=_label(exc.field) if exc.field else TITLE, print_exception=False)
    return gr.Error(exc, title=title, print_exception=False)


def _quote(name: str) -> str:
    return f"“{name}”"


def _template_core(template: str | None, prompt: str | None) -> str | None:
    """The artist's part of `prompt` when it still carries `template`'s own words around it,
    else None. Compared without the joining commas, which wrap_prompt drops for an empty prompt."""
    if not template or prompt is None:
        return None
    before, _, after = template.partition(presets.PROMPT_PLACEHOLDER)
    before, after, text = before.strip(" ,"), after.strip(" ,"), prompt.strip()
    if len(text) < len(before) + len(after):
        return None
    if not (text.startswith(before) and text.endswith(after)):
        return None
    return text[len(before):len(text) - len(after)].strip(" ,")


def hint_text(active: Preset | None, strength: Any, guidance_scale: Any) -> str:
    """The band hint for the page's strength and CFG; empty when in band (or the values are not
    yet valid: a hint never stands in for the field's own validation)."""
    if active is None:
        return ""
    try:
        params = P.make(strength=strength, guidance_scale=guidance_scale)
    except P.ParamsError:
        return ""
    line = presets.band_hint(active, params)
    return line or ""


class PresetActions:
    """The panel's handlers for one studio page.

    fields: the GenerationParams fields that have a component on the page, in input order.
    models: the studio's model names, so a preset naming an absent model is not forced on the page.
    loras: the studio (LoraControls) when the page has the LoRA picker and weight table; their
    values then arrive as values["loras"] and values["lora_weights"] and loads fill both.
    """

    def __init__(self, store: PresetStore, fields: Sequence[str],
                 models: Callable[[], list[str]] | None = None, initial: Startup | None = None,
                 loras: LoraControls | None = None):
        self.store = store
        self.fields = list(fields)
        self.models = models
        self.initial = initial
        self.loras = loras
        self._exports: Path | None = None  # made on the first export, not for every page

    # -- helpers ---------------------------------------------------------------------------------
    def store_for(self, request: Any = None) -> PresetStore:
        """The logged-in user's store (the shared one when auth is off)."""
        return self.store.for_user(getattr(request, "username", None) or None)

    def _choices(self, store: PresetStore, selected: str | None = None) -> tuple[Any, str]:
        listing = store.list()
        names = listing.names()
        found = listing.find(selected) if selected else None
        value = found.name if found is not None else None
        return gr.update(choices=names, value=value), self._broken_text(listing)

    @staticmethod
    def _broken_text(listing: presets.Listing) -> str:
        if not listing.broken:
            return ""
        lines = [f"- {'shipped: ' if b.shipped else ''}{b.reason}" for b in listing.broken]
        return ("**Presets that could not be read** (fix the file; a file of yours can be "
                "deleted by typing its file name above and pressing Delete):\n" + "\n".join(lines))

    def _params(self, values: dict[str, Any]) -> P.GenerationParams:
        data = {name: from_page(name, values.get(name)) for name in self.fields if name in values}
        try:
            return P.make(**data)
        except P.ParamsError as exc:
            text = _named(exc.field, str(exc))
            if text == str(exc):
                text = f"{_label(exc.field)}: {text}"
            raise gr.Error(text, title=_label(exc.field), print_exception=False) from None

    def _saved_fields(self) -> list[str]:
        known = set(P.GenerationParams.model_fields) - set(presets.NOT_IN_PRESETS)
        return [f for f in self.fields if f in known and f not in NOT_SAVED]

    def _known_model(self, name: str) -> str | None:
        if self.models is None:
            return name
        for known in self.models():
            if name in (known, Path(known).stem, Path(known).name):
                return known
        return None

    @staticmethod
    def _get(store: PresetStore, name: str | None, action: str) -> Preset:
        if not name or not str(name).strip():
            raise _error(f"Pick a preset to {action} first.")
        try:
            return store.get(str(name))
        except PresetError as exc:
            raise _error(exc) from None

    def _describe(self, preset: Preset) -> str:
        kind = "shipped, read-only" if preset.shipped else "yours"
        band = f", {preset.band} band" if preset.band else ""
        text = f"**{preset.name}** ({kind}{band})"
        if preset.description:
            text += f": {preset.description}"
        if preset.prompt_template:
            text += f"\n\nPrompt template: `{preset.prompt_template}`"
        return text

    def _template(self, prompt: str | None, *candidates: Preset | None) -> str | None:
        """The first candidate's template that the prompt still carries, so saving keeps a
        style the artist loaded instead of silently dropping its words."""
        for preset in candidates:
            if preset is not None and _template_core(preset.prompt_template, prompt) is not None:
                return preset.prompt_template
        return None

    def _fill(self, preset: Preset, values: dict[str, Any], active: Preset | None
              ) -> tuple[dict[str, Any], list[str], list[str]]:
        """(changes for the page, labels filled, notes) for loading `preset` over `values`."""
        changes: dict[str, Any] = {}
        notes: list[str] = []
        for name, value in preset.settings.items():
            if name not in self.fields:
                continue
            if name == "model":
                known = self._known_model(value)
                if known is None:
                    notes.append(f"Model {value!r} is not available here; kept the current one.")
                    continue
                value = known
            changes[name] = to_page(name, value)
        if preset.prompt_template is not None and "prompt" in self.fields:
            prompt = values.get("prompt") or ""
            # Loading one style after another swaps the style, and loading the same one again
            # leaves it as it is: never a prompt wrapped twice.
            for template in (active.prompt_template if active else None, preset.prompt_template):
                core = _template_core(template, prompt)
                if core is not None:
                    prompt = core
                    break
            changes["prompt"] = presets.wrap_prompt(preset, prompt)
        filled = [_label(n) for n in changes]
        if "loras" in preset.settings and self.loras is not None:
            self._fill_loras(preset, changes, notes)
            filled.append(_label("loras"))
        ignored = [n for n in preset.settings if n not in self.fields
                   and not (n == "loras" and self.loras is not None)]
        if ignored:
            notes.append("Not on this page, so not applied here: " + ", ".join(ignored) + ".")
        return changes, filled, notes

    def _fill_loras(self, preset: Preset, changes: dict[str, Any], notes: list[str]) -> None:
        """The picker's and weight table's updates for the preset's LoRAs; LoRAs not in
        models/Lora become notes (the rest still load)."""
        assert self.loras is not None
        warnings: list[str] = []
        self.loras._fill_loras(_plain(preset.settings["loras"]), changes, warnings)
        notes.extend(f"{w}." for w in warnings)

    def _page_loras(self, values: dict[str, Any]) -> list[dict]:
        """The picked LoRAs with their weights (empty without the LoRA controls)."""
        if self.loras is None:
            return []
        return self.loras._lora_list(values.get("loras"), values.get("lora_weights"))

    @staticmethod
    def _hint(active: Preset | None, values: dict[str, Any]) -> str:
        return hint_text(active, values.get("strength", P.default("strength")),
                         values.get("guidance_scale", P.default("guidance_scale")))

    # -- listing ---------------------------------------------------------------------------------
    def listing(self, selected: str | None = None, request: Any = None) -> View:
        """The dropdown's presets for this user (shipped first) and the unreadable files."""
        choices, broken = self._choices(self.store_for(request), selected)
        return View(choices=choices, broken=broken)

    def describe(self, name: str | None, request: Any = None) -> str:
        """What the selected preset is (shown under the dropdown; never a toast while typing)."""
        if not name or not str(name).strip():
            return ""
        try:
            return self._describe(self.store_for(request).get(str(name)))
        except PresetError as exc:
            return f"⚠️ {exc}"

    # -- load ------------------------------------------------------------------------------------
    def load(self, name: str | None, active: Preset | None, values: dict[str, Any],
             request: Any = None) -> Loaded:
        """Fill the fields the preset names; the others stay as they are."""
        preset = self._get(self.store_for(request), name, "load")
        changes, filled, notes = self._fill(preset, values, active)
        status = f"Loaded {_quote(preset.name)}: " + (", ".join(filled) or "nothing on this page")
        status += "." + "".join(f"\n\n{note}" for note in notes)
        view = View(active=preset, status=status, hint=self._hint(preset, {**values, **changes}),
                    info=self._describe(preset), pending=None, confirm=gr.update(visible=False))
        return Loaded(changes, view)

    def startup(self, request: Any = None) -> Loaded:
        """The page's start-up values for `--preset`: startup_params' values for the fields the
        preset names, and its template with an empty prompt, ready for the artist's subject."""
        if self.initial is None:
            return Loaded({}, View())
        preset, params = self.initial.preset, self.initial.params
        changes: dict[str, Any] = {}
        for name in preset.settings:
            if name in self.fields:
                changes[name] = to_page(name, getattr(params, name))
        if preset.prompt_template is not None and "prompt" in self.fields:
            changes["prompt"] = presets.wrap_prompt(preset, "")
        notes: list[str] = []
        if "loras" in preset.settings and self.loras is not None:
            self._fill_loras(preset, changes, notes)
        choices, broken = self._choices(self.store_for(request), preset.name)
        status = f"Started with {_quote(preset.name)}." + "".join(f"\n\n{n}" for n in notes)
        return Loaded(changes, View(choices=choices, broken=broken, active=preset, status=status,
                                    info=self._describe(preset)))

    def hint(self, active: Preset | None, strength: Any = None, guidance_scale: Any = None) -> str:
        """The hint for the page's strength and CFG (a field not on the page counts as its
        default)."""
        values = {k: v for k, v in (("strength", strength), ("guidance_scale", guidance_scale))
                  if v is not None}
        return self._hint(active, values)

    # -- save, overwrite -------------------------------------------------------------------------
    def _write(self, store: PresetStore, name: str, values: dict[str, Any],
               active: Preset | None, overwrite: bool) -> Preset:
        params = self._params(values)
        fields = self._saved_fields()
        loras = self._page_loras(values)
        if loras:  # only a preset with LoRAs picked holds them
            params = params.model_copy(update={"loras": P.make(loras=loras).loras})
            fields.append("loras")
        existing = store.list().find(name) if overwrite else None
        template = self._template(values.get("prompt"), active, existing)
        return store.save_params(
            name, params, overwrite=overwrite, fields=fields,
            prompt_template=template,
            description=existing.description if existing is not None else "")

    def _saved_view(self, store: PresetStore, saved: Preset, values: dict[str, Any],
                    verb: str) -> View:
        choices, broken = self._choices(store, saved.name)
        return View(choices=choices, broken=broken, info=self._describe(saved), active=saved,
                    pending=None, confirm=gr.update(visible=False),
                    status=f"{verb} {_quote(saved.name)}.", hint=self._hint(saved, values))

    def save_as(self, name: str | None, active: Preset | None, values: dict[str, Any],
                request: Any = None) -> View:
        """Save the page's settings as a new preset of this user. A name that is already one of
        the user's presets asks first (the confirm step) instead of replacing it."""
        store = self.store_for(request)
        try:
            name = presets.check_name(name)
            saved = self._write(store, name, values, active, overwrite=False)
        except PresetExists as exc:
            existing = store.list().find(name)
            if existing is None or existing.shipped:
                raise _error(exc) from None
            return self._ask(existing.name)
        except PresetError as exc:
            raise _error(exc) from None
        except OSError as exc:
            raise _error(f"The preset could not be written ({exc.strerror or exc}).") from None
        view = self._saved_view(store, saved, values, "Saved")
        return view._replace(name="")

    def _ask(self, name: str) -> View:
        return View(pending=name, confirm=gr.update(visible=True),
                    asking=gr.update(visible=False),
                    status=f"⚠️ {_quote(name)} already exists. Press “Confirm overwrite” "
                    "to replace it with the current settings, or “Cancel” to keep it.")

    def overwrite(self, selected: str | None, request: Any = None) -> View:
        """Ask before replacing the selected preset with the page's settings."""
        preset = self._get(self.store_for(request), selected, "overwrite")
        if preset.shipped:
            raise _error(f"{_quote(preset.name)} is a shipped preset and cannot be replaced; "
                         "use Save as… with a new name.")
        return self._ask(preset.name)

    def confirm(self, pending: str | None, active: Preset | None, values: dict[str, Any],
                request: Any = None) -> View:
        """The confirm step: replace the pending preset with the page's current settings."""
        if not pending:
            raise _error("Nothing is waiting to be overwritten: press Overwrite first.")
        store = self.store_for(request)
        try:
            saved = self._write(store, pending, values, active, overwrite=True)
        except PresetError as exc:
            raise _error(exc) from None
        except OSError as exc:
            raise _error(f"The preset could not be written ({exc.strerror or exc}).") from None
        return self._saved_view(store, saved, values, "Overwrote")

    def cancel(self, pending: str | None = None) -> View:
        text = f"Kept {_quote(pending)} as it was." if pending else ""
        return View(pending=None, confirm=gr.update(visible=False), status=text)

    # -- delete, export, import ------------------------------------------------------------------
    def ask_delete(self, selected: str | None, request: Any = None) -> View:
        """Delete pressed: ask before anything is removed (a shipped preset is refused here)."""
        if not selected or not str(selected).strip():
            raise _error("Pick a preset to delete first.")
        try:
            preset = self.store_for(request).get(str(selected))
        except PresetError:
            preset = None  # an unreadable file of the user's: deletable by its name
        if preset is not None and preset.shipped:
            raise _error(f"{_quote(preset.name)} is a shipped preset and cannot be deleted.")
        return View(asking=gr.update(visible=True), confirm=gr.update(visible=False),
                    pending=None,
                    status=f"Delete {_quote(selected)} for good? It cannot be undone.")

    def keep(self, selected: str | None = None) -> View:
        text = f"Kept {_quote(selected)}." if selected else ""
        return View(asking=gr.update(visible=False), status=text)

    def delete(self, selected: str | None, active: Preset | None, request: Any = None) -> View:
        """Delete one of the user's presets (or an unreadable file of theirs, by its name)."""
        store = self.store_for(request)
        if not selected or not str(selected).strip():
            raise _error("Pick a preset to delete first.")
        try:
            store.delete(str(selected))
        except PresetError as exc:
            raise _error(exc) from None
        except OSError as exc:
            raise _error(f"The preset could not be deleted ({exc.strerror or exc}).") from None
        choices, broken = self._choices(store)
        gone = active is not None and presets.slugify(active.name) == presets.slugify(selected)
        return View(choices=choices, broken=broken, info="", status=f"Deleted {_quote(selected)}.",
                    active=None if gone else KEEP, hint="" if gone else KEEP, pending=None,
                    confirm=gr.update(visible=False), export=gr.update(value=None, visible=False),
                    asking=gr.update(visible=False))

    def export(self, selected: str | None, request: Any = None) -> View:
        """The selected preset (shipped ones too) as a JSON file to download."""
        store = self.store_for(request)
        preset = self._get(store, selected, "export")
        try:
            data = store.export(preset.name)
        except PresetError as exc:
            raise _error(exc) from None
        if self._exports is None:
            self._exports = Path(tempfile.mkdtemp(prefix="preset-exports-"))
        # A folder per export, so two users exporting the same name never share a file.
        path = Path(tempfile.mkdtemp(dir=self._exports)) / f"{preset.slug}.json"
        path.write_bytes(data)
        return View(export=gr.update(value=str(path), visible=True),
                    status=f"Exported {_quote(preset.name)}: download it below.")

    def import_file(self, upload: Any, request: Any = None) -> View:
        """Validate an uploaded preset and save it as the user's; a taken name is renamed."""
        if upload is None:
            raise _error("Choose a preset .json file to import.")
        path = Path(upload if isinstance(upload, (str, Path)) else getattr(upload, "name", ""))
        try:
            with open(path, "rb") as handle:
                data = handle.read(presets.MAX_FILE_BYTES + 1)
        except OSError:
            raise _error("The upload did not arrive; choose the file again.") from None
        store = self.store_for(request)
        try:
            parsed = presets.parse(data, path.name)
            saved = store.import_bytes(data, path.name, on_conflict="rename")
        except PresetError as exc:
            raise _error(exc) from None
        except OSError as exc:
            raise _error(f"The preset could not be written ({exc.strerror or exc}).") from None
        assert saved is not None
        status = f"Imported {_quote(saved.name)}."
        if saved.name != parsed.name:
            status = (f"Imported as {_quote(saved.name)}: the name {_quote(parsed.name)} was "
                      "already taken.")
        choices, broken = self._choices(store, saved.name)
        return View(choices=choices, broken=broken, info=self._describe(saved), status=status)


# -- the page ------------------------------------------------------------------------------------
def build(store: PresetStore | None = None, initial: Startup | None = None,
          hint: gr.Markdown | None = None) -> Panel:
    """The panel's components; call inside the page's presets area. hint: where the band hint
    goes (the page puts it beside the strength and CFG sliders); default: in the panel."""
    store = store if store is not None else PresetStore()
    # The page is built before anyone logs in: list only the shared presets here and each
    # user's own when their page loads.
    shipped = [p.name for p in store.list().presets if p.shipped]
    gr.Markdown("**Presets**", padding=True, elem_id="presets-title")
    with gr.Row(elem_id="preset-row"):
        dropdown = gr.Dropdown(
            shipped, value=initial.preset.name if initial else None, label="Preset",
            allow_custom_value=True, scale=5, elem_id="preset-select",
            info="Shipped presets and yours. Load fills only the settings a preset names.")
        refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="preset-refresh")
    info = gr.Markdown(padding=True, elem_id="preset-info")
    with gr.Row(elem_id="preset-actions"):
        load = gr.Button("Load", variant="primary", size="sm", elem_id="preset-load")
        overwrite = gr.Button("Overwrite", size="sm", elem_id="preset-overwrite")
        delete = gr.Button("Delete", variant="stop", size="sm", elem_id="preset-delete")
        export = gr.Button("Export", size="sm", elem_id="preset-export")
        upload = gr.UploadButton("Import…", file_types=[".json"], type="filepath", size="sm",
                                 elem_id="preset-import")
    with gr.Row(elem_id="preset-save-row"):
        name = gr.Textbox(label="New preset name", placeholder="My portrait look", scale=4,
                          elem_id="preset-name",
                          info="Saves every setting on the page except the prompt, seed and "
                          "model.")
        save = gr.Button("Save as…", scale=1, elem_id="preset-save")
    with gr.Row(visible=False, elem_id="preset-confirm-row") as confirm_row:
        confirm = gr.Button("Confirm overwrite", variant="stop", size="sm",
                            elem_id="preset-confirm")
        cancel = gr.Button("Cancel", size="sm", elem_id="preset-cancel")
    with gr.Row(visible=False, elem_id="preset-delete-row") as delete_row:
        delete_confirm = gr.Button("Delete for good", variant="stop", size="sm",
                                   elem_id="preset-delete-confirm")
        delete_cancel = gr.Button("Keep it", size="sm", elem_id="preset-delete-cancel")
    status = gr.Markdown(padding=True, elem_id="preset-status")
    if hint is None:
        hint = gr.Markdown(padding=True, elem_id="preset-hint")
    export_file = gr.File(label="Exported preset", visible=False, interactive=False,
                          elem_id="preset-export-file")
    broken = gr.Markdown(padding=True, elem_id="preset-broken")
    active = gr.State(None)
    pending = gr.State(None)
    return Panel(dropdown, refresh, info, load, overwrite, delete, export, upload, name, save,
                 confirm_row, confirm, cancel, export_file, status, hint, broken, active, pending,
                 store, initial, delete_row, delete_confirm, delete_cancel)


def _flat(view: View) -> list:
    return [gr.skip() if part is KEEP else part for part in view]


def wire(panel: Panel, by_field: dict[str, Any], demo: gr.Blocks,
         models: Callable[[], list[str]] | None = None,
         loras: LoraControls | None = None) -> PresetActions:
    """Connect the panel's events; `by_field` maps GenerationParams fields to the page's
    components (whatever fields it holds; other names are left out by page_fields). With `loras`
    (the studio) and both LORA_CONTROLS in `by_field`, presets load and save the picked LoRAs.
    Call inside the page's Blocks, after `by_field`."""
    lora_comps = [by_field[n] for n in LORA_CONTROLS if n in by_field]
    if loras is None or len(lora_comps) != len(LORA_CONTROLS):
        loras, lora_comps = None, []
    by_field = page_fields(by_field)
    fields = list(by_field)
    actions = PresetActions(panel.store, fields, models, panel.initial, loras)
    # The page's values in input order: the settings' own controls, then the LoRA controls.
    names = fields + (list(LORA_CONTROLS) if loras is not None else [])
    comps = [by_field[n] for n in fields] + lora_comps
    views = panel.view_outputs()
    # Toasts (gr.Error) travel on the queue; no concurrency limit, so a preset click never waits
    # behind a GPU job. A refused action marks only the panel's status line with "Error", not
    # every field it would have filled. The hint has no toast and answers at once.
    toasting = dict(show_progress="hidden", show_progress_on=[panel.status],
                    concurrency_limit=None)
    instant = dict(queue=False, show_progress="hidden")

    # The request comes first: Gradio fills it in only among the positional parameters, which
    # end where the page's field values (*values) begin.
    def loaded_outputs(result: Loaded) -> list:
        return [result.values.get(n, gr.skip()) for n in names] + _flat(result.view)

    def listing(request: gr.Request, selected):
        return _flat(actions.listing(selected, request))

    def load(request: gr.Request, selected, active, *values):
        return loaded_outputs(actions.load(selected, active, dict(zip(names, values)), request))

    def startup(request: gr.Request):
        return loaded_outputs(actions.startup(request))

    def save(request: gr.Request, name, active, *values):
        return _flat(actions.save_as(name, active, dict(zip(names, values)), request))

    def overwrite(request: gr.Request, selected):
        return _flat(actions.overwrite(selected, request))

    def confirm(request: gr.Request, pending, active, *values):
        return _flat(actions.confirm(pending, active, dict(zip(names, values)), request))

    def cancel(pending):
        return _flat(actions.cancel(pending))

    def delete(request: gr.Request, selected, active):
        return _flat(actions.delete(selected, active, request))

    def ask_delete(request: gr.Request, selected):
        return _flat(actions.ask_delete(selected, request))

    def keep(selected):
        return _flat(actions.keep(selected))

    def export(request: gr.Request, selected):
        return _flat(actions.export(selected, request))

    def import_file(request: gr.Request, upload):
        return _flat(actions.import_file(upload, request))

    def describe(request: gr.Request, selected):
        return actions.describe(selected, request)

    if panel.initial is not None:
        demo.load(startup, None, comps + views, api_name="preset_startup", **toasting)
    else:
        demo.load(listing, [panel.dropdown], views, api_name="preset_startup", **toasting)
    panel.refresh.click(listing, [panel.dropdown], views, api_name="preset_list", **toasting)
    panel.dropdown.change(describe, [panel.dropdown], [panel.info], api_name="preset_info",
                          **toasting)
    panel.load.click(load, [panel.dropdown, panel.active, *comps], comps + views,
                     api_name="preset_load", **toasting)
    panel.save.click(save, [panel.name, panel.active, *comps], views, api_name="preset_save",
                     **toasting)
    panel.name.submit(save, [panel.name, panel.active, *comps], views,
                      api_name="preset_save_submit", **toasting)
    panel.overwrite.click(overwrite, [panel.dropdown], views, api_name="preset_overwrite",
                          **toasting)
    panel.confirm.click(confirm, [panel.pending, panel.active, *comps], views,
                        api_name="preset_overwrite_confirm", **toasting)
    panel.cancel.click(cancel, [panel.pending], views, api_name="preset_overwrite_cancel",
                       **toasting)
    panel.delete.click(ask_delete, [panel.dropdown], views, api_name="preset_delete_ask",
                       **toasting)
    panel.delete_confirm.click(delete, [panel.dropdown, panel.active], views,
                               api_name="preset_delete", **toasting)
    panel.delete_cancel.click(keep, [panel.dropdown], views, api_name="preset_delete_keep",
                              **toasting)
    panel.export.click(export, [panel.dropdown], views, api_name="preset_export", **toasting)
    panel.upload.upload(import_file, [panel.upload], views, api_name="preset_import",
                        **toasting)
    hint_inputs = [by_field[n] for n in HINT_FIELDS if n in by_field]
    if hint_inputs:
        def hint(active, *values):
            given = dict(zip([n for n in HINT_FIELDS if n in by_field], values))
            return actions.hint(active, given.get("strength"), given.get("guidance_scale"))

        gr.on([c.change for c in hint_inputs], hint, [panel.active, *hint_inputs], [panel.hint],
              api_name="preset_hint", **instant)
    return actions
