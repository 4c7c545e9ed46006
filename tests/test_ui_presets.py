"""The studio's presets panel, driven through its handlers (no browser): listing with broken files,
load, save as, overwrite with its confirm step, delete, export, import, per-user folders with
auth, the band hint, and `--preset` at start-up."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from webui import params as P
from webui import presets
from webui.ui import launch, presets_panel
from webui.ui.presets_panel import KEEP, PresetActions

# The page's fields as app.py lists them; tests also use subsets, as another page might.
FIELDS = ("model", "prompt", "negative_prompt", "strength", "guidance_scale", "steps", "seed",
          "scheduler", "width", "height", "resize_mode", "batch_count", "batch_size")
ANN, BOB = SimpleNamespace(username="ann"), SimpleNamespace(username="bob")
NO_AUTH = SimpleNamespace(username=None)


def page(**changes):
    """The page's values as the components hold them (width 0 = keep the init image's size)."""
    values = {"model": "tiny-random", "prompt": "a red fox", "negative_prompt": "",
              "strength": 0.65, "guidance_scale": 7.0, "steps": 20, "seed": 1234,
              "scheduler": "Euler a", "width": 0, "height": 0, "resize_mode": "just resize",
              "batch_count": 1, "batch_size": 1}
    values.update(changes)
    return values


@pytest.fixture
def root(tmp_path):
    return tmp_path / "user-presets"


@pytest.fixture
def actions(root):
    return PresetActions(presets.PresetStore(root), FIELDS, models=lambda: ["tiny-random"])


def error_text(excinfo) -> str:
    return excinfo.value.message


def choices(view) -> list[str]:
    return list(view.choices["choices"])


# -- listing -------------------------------------------------------------------------------------
def test_listing_has_shipped_and_own_presets_and_broken_files_with_reasons(actions, root):
    view = actions.listing(None, ANN)
    names = choices(view)
    assert "Van Gogh style" in names and "Balanced — start here" in names
    assert view.broken == ""
    user_dir = actions.store_for(ANN).user_dir
    user_dir.mkdir(parents=True)
    (user_dir / "typo.json").write_text('{"name": "Typo", "cfg": 7}')
    (user_dir / "half.json").write_text('{"name": "Half", ')
    view = actions.listing("Van Gogh style", ANN)
    assert view.choices["value"] == "Van Gogh style"
    assert "Typo" not in choices(view)
    assert "typo.json" in view.broken and "did you mean 'guidance_scale'" in view.broken
    assert "half.json" in view.broken and "not valid JSON" in view.broken
    # A broken file of one's own can be deleted by its file name.
    view = actions.delete("typo", None, ANN)
    assert "typo.json" not in view.broken and not (user_dir / "typo.json").exists()


def test_describe_says_shipped_or_yours(actions):
    text = actions.describe("Van Gogh style", ANN)
    assert "shipped, read-only" in text and "{prompt}, in the style of" in text
    assert actions.describe("", ANN) == ""
    assert "no preset named" in actions.describe("Nope", ANN)  # typing never raises a toast


# -- load ----------------------------------------------------------------------------------------
def test_load_fills_only_the_named_fields_and_wraps_the_prompt(actions):
    loaded = actions.load("Van Gogh style", None, page(strength=0.9, steps=7, seed=99), ANN)
    values = loaded.values
    assert values["strength"] == 0.55 and values["guidance_scale"] == 7.0
    assert values["steps"] == 30 and values["scheduler"] == "Euler a"
    assert values["negative_prompt"] == P.STANDARD_NEGATIVE
    assert values["prompt"] == ("a red fox, in the style of Vincent van Gogh, impressionist oil "
                                "painting, thick brushstrokes, swirling sky, vivid colors")
    for untouched in ("seed", "width", "height", "model", "batch_count", "resize_mode"):
        assert untouched not in values
    view = loaded.view
    assert view.active.name == "Van Gogh style"
    assert view.status.startswith("Loaded “Van Gogh style”")
    assert "Denoising strength" in view.status
    assert view.hint == ""  # the loaded values are in the preset's band

    # A second style replaces the first one's words instead of wrapping them again.
    again = actions.load("Sketch to photo", view.active, page(prompt=values["prompt"]), ANN)
    assert again.values["prompt"] == ("a red fox, photorealistic photo, highly detailed, sharp "
                                      "focus, intricate details, natural lighting")
    # The same style again, even with the loaded preset forgotten (a reloaded page): no change.
    same = actions.load("Van Gogh style", None, page(prompt=values["prompt"]), ANN)
    assert same.values["prompt"] == values["prompt"]


def test_load_ignores_settings_the_page_has_no_control_for(root):
    narrow = PresetActions(presets.PresetStore(root), ("prompt", "strength", "batch_size"))
    loaded = narrow.load("Low VRAM", None, {"prompt": "x", "strength": 0.3, "batch_size": 4})
    assert loaded.values == {"batch_size": 1}
    assert "attention_slicing" in loaded.view.status and "not applied" in loaded.view.status
    loaded = narrow.load("Total overhaul", None, {"prompt": "x", "strength": 0.3, "batch_size": 4})
    assert loaded.values == {"strength": 0.85}


def test_page_fields_keep_controls_that_hold_one_setting():
    components = {name: object() for name in (
        "strength", "attention_slicing", "mask_blur", "loras", "controlnets", "ip_adapter",
        "output_type", "mask", "mode", "cn1_model", "lora_weights")}
    assert list(presets_panel.page_fields(components)) == ["strength", "attention_slicing",
                                                          "mask_blur"]


def test_low_vram_fills_the_memory_controls_when_the_page_has_them(root):
    memory = ("attention_slicing", "vae_tiling", "cpu_offload")
    actions = PresetActions(presets.PresetStore(root), FIELDS + memory)
    values = {**page(batch_size=4), **dict.fromkeys(memory, "auto")}
    loaded = actions.load("Low VRAM", None, values)
    assert loaded.values == {"batch_size": 1, "attention_slicing": "on", "vae_tiling": "on",
                             "cpu_offload": "on"}
    assert "not applied" not in loaded.view.status
    saved = actions.save_as("Lean", None, {**values, "vae_tiling": "off"})
    assert saved.active.settings["vae_tiling"] == "off"


def test_load_of_a_missing_model_keeps_the_current_one(actions):
    store = actions.store_for(ANN)
    store.save(presets.from_dict({"name": "Pinned", "model": "gone.safetensors",
                                  "steps": 12}))
    loaded = actions.load("Pinned", None, page(), ANN)
    assert loaded.values == {"steps": 12}
    assert "'gone.safetensors' is not available here" in loaded.view.status


def test_load_refuses_clearly(actions):
    with pytest.raises(gr.Error, match="Pick a preset to load"):
        actions.load(None, None, page(), ANN)
    with pytest.raises(gr.Error, match="no preset named 'Nope'"):
        actions.load("Nope", None, page(), ANN)


# -- save as, overwrite --------------------------------------------------------------------------
def test_save_as_then_load_brings_the_values_back(actions):
    view = actions.save_as("  My look ", None, page(strength=0.42, guidance_scale=9.5, steps=33,
                                                    width=512, batch_size=2), ANN)
    assert view.status == "Saved “My look”." and view.name == ""
    assert view.choices["value"] == "My look" and "My look" in choices(view)
    assert view.active.name == "My look" and view.confirm == {"__type__": "update",
                                                               "visible": False}
    data = json.loads(view.active.path.read_text())
    assert data["strength"] == 0.42 and data["width"] == 512 and data["band"] == "medium"
    for left_out in ("prompt", "seed", "model"):
        assert left_out not in data
    # Change everything, load it back.
    loaded = actions.load("My look", None, page(strength=0.9, guidance_scale=3, steps=5,
                                                width=0, batch_size=8), ANN)
    assert {k: loaded.values[k] for k in ("strength", "guidance_scale", "steps", "width",
                                         "batch_size")} == {
        "strength": 0.42, "guidance_scale": 9.5, "steps": 33, "width": 512, "batch_size": 2}
    assert loaded.values["height"] == 0  # "keep the init size" shows as 0 on the page
    assert "prompt" not in loaded.values


def test_save_as_keeps_the_loaded_style(actions):
    gogh = actions.load("Van Gogh style", None, page(), ANN)
    edited = {**gogh.values, "prompt": gogh.values["prompt"].replace("fox", "owl")}
    view = actions.save_as("My Gogh", gogh.view.active, page(**edited), ANN)
    assert view.active.prompt_template == gogh.view.active.prompt_template
    plain = actions.save_as("Plain", gogh.view.active, page(prompt="no style here"), ANN)
    assert plain.active.prompt_template is None


def test_overwrite_asks_first_and_only_the_confirm_writes(actions):
    actions.save_as("Mine", None, page(steps=10), ANN)
    path = actions.store_for(ANN).get("Mine").path
    before = path.read_bytes()

    # Save as… with a taken name asks, never replaces silently.
    asked = actions.save_as("mine", None, page(steps=44), ANN)
    assert asked.pending == "Mine" and asked.confirm["visible"] is True
    assert "already exists" in asked.status and "Confirm overwrite" in asked.status
    assert path.read_bytes() == before
    kept = actions.cancel(asked.pending)
    assert kept.pending is None and kept.confirm["visible"] is False and "Kept" in kept.status
    assert path.read_bytes() == before

    # Overwrite of the selected preset asks too; the confirm writes the page's current values.
    asked = actions.overwrite("Mine", ANN)
    assert asked.pending == "Mine" and asked.confirm["visible"] is True
    assert path.read_bytes() == before
    done = actions.confirm(asked.pending, None, page(steps=45), ANN)
    assert done.status == "Overwrote “Mine”." and done.pending is None
    assert json.loads(path.read_text())["steps"] == 45

    with pytest.raises(gr.Error, match="press Overwrite first"):
        actions.confirm(None, None, page(), ANN)
    with pytest.raises(gr.Error, match="shipped preset and cannot be replaced"):
        actions.overwrite("Van Gogh style", ANN)
    with pytest.raises(gr.Error, match="Pick a preset to overwrite"):
        actions.overwrite("", ANN)


def test_overwrite_keeps_description_and_style(actions):
    store = actions.store_for(ANN)
    store.save(presets.from_dict({"name": "Styled", "description": "my notes", "steps": 10,
                                  "prompt_template": "{prompt}, ink drawing"}))
    loaded = actions.load("Styled", None, page(prompt="a cat"), ANN)
    assert loaded.values["prompt"] == "a cat, ink drawing"
    done = actions.confirm("Styled", None, page(prompt="a dog, ink drawing", steps=11), ANN)
    assert done.active.description == "my notes"
    assert done.active.prompt_template == "{prompt}, ink drawing"
    assert done.active.settings["steps"] == 11


@pytest.mark.parametrize("name, message", [
    ("../escape", "Preset name must not contain path separators"),
    ("/etc/passwd", "Preset name must not contain path separators"),
    ("CON", "reserved device name"),
    ("  ", "Preset name must not be empty"),
    (None, "Preset name must be text"),
    (".hidden", "must not start or end with a dot"),
    ("x" * 81, "Preset name is too long"),
    ("Van Gogh style", "shipped preset and cannot be replaced"),
    ("van-gogh-style", "shipped preset and cannot be replaced"),
])
def test_bad_names_are_clear_errors_and_write_nothing(actions, root, name, message):
    with pytest.raises(gr.Error) as excinfo:
        actions.save_as(name, None, page(), ANN)
    assert message in error_text(excinfo)
    assert not list(root.parent.rglob("*.json"))
    # The page keeps working after a refusal.
    assert actions.save_as("Fine", None, page(), ANN).status == "Saved “Fine”."


def test_bad_page_values_name_the_field(actions):
    with pytest.raises(gr.Error, match="Denoising strength must be a number from 0 to 1"):
        actions.save_as("Odd", None, page(strength=3), ANN)
    with pytest.raises(gr.Error, match="Sampler"):
        actions.save_as("Odd", None, page(scheduler="nope"), ANN)


# -- delete, export, import ----------------------------------------------------------------------
def test_delete_own_presets_only(actions):
    saved = actions.save_as("Gone soon", None, page(), ANN)
    view = actions.delete("Gone soon", saved.active, ANN)
    assert view.status == "Deleted “Gone soon”." and "Gone soon" not in choices(view)
    assert view.active is None and view.hint == ""
    assert not saved.active.path.exists()
    other = actions.save_as("Other", None, page(), ANN)
    gogh = actions.store_for(ANN).get("Van Gogh style")
    view = actions.delete("Other", gogh, ANN)
    assert view.active is KEEP  # deleting another preset leaves the loaded one active
    assert gogh.path.exists() and not other.active.path.exists()
    with pytest.raises(gr.Error, match="shipped preset and cannot be deleted"):
        actions.delete("Van Gogh style", None, ANN)
    with pytest.raises(gr.Error, match="no preset named 'Nope'"):
        actions.delete("Nope", None, ANN)
    with pytest.raises(gr.Error, match="Pick a preset to delete"):
        actions.delete(None, None, ANN)


def test_export_and_import_round_trip_with_collisions(actions, tmp_path):
    shipped = actions.export("Van Gogh style", ANN)
    path = Path(shipped.export["value"])
    assert shipped.export["visible"] is True and path.name == "van-gogh-style.json"
    assert json.loads(path.read_text())["negative_prompt"] == "{standard_negative}"

    # Importing a shipped preset's file: the name is taken, so it is renamed, and said so.
    view = actions.import_file(str(path), ANN)
    assert view.status == ("Imported as “Van Gogh style (2)”: the name “Van Gogh style” "
                           "was already taken.")
    assert "Van Gogh style (2)" in choices(view)
    mine = actions.export("Van Gogh style (2)", ANN)
    again = actions.import_file(mine.export["value"], ANN)
    assert "Van Gogh style (3)" in again.status

    new = tmp_path / "fresh.json"
    new.write_text(json.dumps({"name": "Fresh", "steps": 9}))
    assert actions.import_file(str(new), ANN).status == "Imported “Fresh”."
    assert actions.store_for(ANN).get("Fresh").settings == {"steps": 9}


@pytest.mark.parametrize("content, message", [
    ('{"name": "X", "steps": "many"}', "x.json: Sampling steps must be a whole number"),
    ('{"name": "X", "cfg": 7}', "did you mean 'guidance_scale'"),
    ('{"name": "../x"}', "x.json: Preset name must not contain path separators"),
    ('{"name": "X", "prompt": "cat"}', "a preset does not hold the prompt"),
    ('[1, 2]', "a preset must be a JSON object"),
    ("not json", "not valid JSON"),
    ('{"name": "X", "schema_version": 9}', "newer version of the studio"),
])
def test_import_validates(actions, tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(gr.Error) as excinfo:
        actions.import_file(str(path), ANN)
    assert message in error_text(excinfo)
    assert not actions.store_for(ANN).user_dir.exists()


def test_import_refuses_missing_and_huge_files(actions, tmp_path):
    with pytest.raises(gr.Error, match="Choose a preset .json file"):
        actions.import_file(None, ANN)
    with pytest.raises(gr.Error, match="did not arrive"):
        actions.import_file(str(tmp_path / "missing.json"), ANN)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (presets.MAX_FILE_BYTES + 10))
    with pytest.raises(gr.Error, match="too large"):
        actions.import_file(str(huge), ANN)


# -- per-user presets ----------------------------------------------------------------------------
def test_each_user_has_their_own_presets(actions, root):
    actions.save_as("Ann's look", None, page(steps=11), ANN)
    actions.save_as("Shared look", None, page(steps=13), NO_AUTH)
    assert "Ann's look" in choices(actions.listing(None, ANN))
    bob = choices(actions.listing(None, BOB))
    assert "Ann's look" not in bob and "Shared look" not in bob and "Van Gogh style" in bob
    assert "Shared look" not in choices(actions.listing(None, ANN))
    with pytest.raises(gr.Error, match="no preset named"):
        actions.load("Ann's look", None, page(), BOB)
    with pytest.raises(gr.Error, match="no preset named"):
        actions.delete("Ann's look", None, BOB)
    with pytest.raises(gr.Error, match="no preset named"):
        actions.export("Ann's look", BOB)
    # The same name is free for each user.
    assert actions.save_as("Ann's look", None, page(steps=12), BOB).status.startswith("Saved")
    ann_file = actions.store_for(ANN).get("Ann's look").path
    bob_file = actions.store_for(BOB).get("Ann's look").path
    assert ann_file != bob_file and ann_file.parent.parent == bob_file.parent.parent == root
    assert json.loads(ann_file.read_text())["steps"] == 11
    # Without auth, the shared folder is the root itself.
    assert actions.store_for(NO_AUTH).get("Shared look").path.parent == root


# -- the band hint -------------------------------------------------------------------------------
def test_band_hint_is_gentle_and_only_out_of_band(actions):
    gogh = actions.store_for(ANN).get("Van Gogh style")
    assert actions.hint(gogh, 0.6, 7.5) == ""
    text = actions.hint(gogh, 0.9, 7)
    assert "medium strength (0.4–0.7)" in text and "strength 0.9" in text and "fine if" in text
    assert "CFG 12" in actions.hint(gogh, 0.5, 12)
    assert actions.hint(None, 0.9, 12) == ""
    assert actions.hint(gogh, "junk", 7) == ""  # never a block, even for nonsense
    # Saving from out of band: the new preset's band follows its own strength.
    saved = actions.save_as("Strong", gogh, page(strength=0.9), ANN)
    assert saved.active.band == "overhaul" and saved.hint == ""


# -- --preset at start-up ------------------------------------------------------------------------
def _launch_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    launch.add_launch_arguments(parser)
    return parser.parse_args(list(argv))


def test_startup_preset_sets_the_page(root):
    args = _launch_args("--preset", "van gogh style", "--user-presets", str(root))
    store, preset, params = launch.preset_setup(args)
    assert preset.name == "Van Gogh style" and params.strength == 0.55
    assert store.root == root.resolve()
    startup = presets_panel.Startup(preset, params)
    actions = PresetActions(store, FIELDS, initial=startup)
    loaded = actions.startup(NO_AUTH)
    assert loaded.values["strength"] == 0.55 and loaded.values["steps"] == 30
    assert loaded.values["prompt"].startswith("in the style of Vincent van Gogh")
    assert "seed" not in loaded.values
    assert loaded.view.active == preset and loaded.view.choices["value"] == "Van Gogh style"
    assert launch.preset_setup(_launch_args())[1:] == (None, None)
    assert PresetActions(store, FIELDS).startup().values == {}


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "--preset: no preset named 'No such preset'"),
    (lambda d: (d.mkdir(), (d / "no-such-preset.json").write_text('{"name": "No such preset", '
                                                                  '"steps": -1}')),
     "--preset: no-such-preset.json: preset 'No such preset' is broken"),
])
def test_bad_startup_preset_exits_2(tmp_path, capsys, setup, expected):
    from webui.__main__ import main

    folder = tmp_path / "presets"
    setup(folder)
    code = main(["--preset", "No such preset", "--user-presets", str(folder), "--models-dir",
                 str(tmp_path), "--outputs-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert not (tmp_path / "out").exists()  # refused before anything was set up


def test_user_presets_must_be_a_folder(tmp_path, capsys):
    from webui.__main__ import main

    (tmp_path / "file").write_text("")
    assert main(["--user-presets", str(tmp_path / "file"), "--outputs-dir",
                 str(tmp_path / "out")]) == 2
    assert "--user-presets" in capsys.readouterr().err


# -- the page ------------------------------------------------------------------------------------
def test_page_has_the_panel_wired(tmp_path):
    from webui.engine.core import Engine
    from webui.ui import app, handlers

    engine = Engine(models_dir=tmp_path, outputs_dir=tmp_path / "out", model="tiny-random")
    store = presets.PresetStore(tmp_path / "user-presets")
    startup = presets_panel.Startup(store.get("Total overhaul"),
                                    presets.startup_params("Total overhaul", store))
    demo = app.build(handlers.Studio(engine), initial=startup, presets=store)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"preset_load", "preset_save", "preset_overwrite", "preset_overwrite_confirm",
            "preset_delete", "preset_export", "preset_import", "preset_list", "preset_hint",
            "preset_startup"} <= names
    # The start-up event fills the page: one value per output, the preset's where it names one.
    fn = next(f for f in demo.fns.values() if f.api_name == "preset_startup")
    outputs = fn.fn(SimpleNamespace(username="ann"))
    assert len(outputs) == len(fn.outputs)
    by_id = {block.elem_id: value for block, value in zip(fn.outputs, outputs)}
    assert by_id["strength"] == 0.85 and by_id["steps"] == 30 and by_id["cfg"] == 7.0
    assert by_id["seed"] == gr.skip()
    # Load and save take the LoRA picker and weight table too; load fills them.
    for api_name in ("preset_load", "preset_save", "preset_overwrite_confirm"):
        fn = next(f for f in demo.fns.values() if f.api_name == api_name)
        assert {"loras", "lora-weights"} <= {block.elem_id for block in fn.inputs}
    load = next(f for f in demo.fns.values() if f.api_name == "preset_load")
    assert {"loras", "lora-weights"} <= {block.elem_id for block in load.outputs}
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"preset-select", "preset-load", "preset-save", "preset-name", "preset-overwrite",
            "preset-confirm", "preset-delete", "preset-export", "preset-import", "preset-hint",
            "preset-broken", "preset-status"} <= ids


# -- LoRAs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_studio(tmp_path_factory):
    from webui.engine.core import Engine
    from webui.tiny import build_pipeline
    from tests.support.tiny_adapters import make_lora
    from webui.ui import handlers

    root = tmp_path_factory.mktemp("lora-models")
    make_lora(build_pipeline("tiny-random"), root / "Lora" / "film.safetensors", seed=1)
    engine = Engine(models_dir=root, outputs_dir=root / "out", model="tiny-random")
    return handlers.Studio(engine)


@pytest.fixture
def lora_actions(root, lora_studio):
    return PresetActions(presets.PresetStore(root), FIELDS, models=lambda: ["tiny-random"],
                         loras=lora_studio)


def lora_page(names=(), rows=(), **changes):
    from webui.ui.handlers import LORA_HEADERS

    return {**page(**changes), "loras": list(names),
            "lora_weights": {"headers": LORA_HEADERS, "data": [list(r) for r in rows]}}


def test_load_fills_the_lora_picker_and_weights(lora_actions):
    lora_actions.store_for(ANN).save(presets.from_dict(
        {"name": "Filmic", "steps": 12, "loras": [{"name": "film", "weight": 0.6}]}))
    loaded = lora_actions.load("Filmic", None, lora_page(), ANN)
    assert loaded.values["loras"]["value"] == ["film"] and "film" in loaded.values["loras"]["choices"]
    assert loaded.values["lora_weights"]["value"]["data"] == [["film", 0.6]]
    assert loaded.values["lora_weights"]["visible"] is True
    assert "LoRAs" in loaded.view.status and "not applied" not in loaded.view.status
    # A preset without LoRAs leaves the picker and the table as they are.
    plain = lora_actions.load("Van Gogh style", None, lora_page(["film"], [["film", 0.3]]), ANN)
    assert "loras" not in plain.values and "lora_weights" not in plain.values


def test_save_as_stores_the_picked_loras_and_loads_them_back(lora_actions):
    view = lora_actions.save_as("With film", None, lora_page(["film"], [["film", 0.7]]), ANN)
    data = json.loads(view.active.path.read_text())
    assert data["loras"] == [{"name": "film", "weight": 0.7}]
    loaded = lora_actions.load("With film", None, lora_page(), ANN)
    assert loaded.values["lora_weights"]["value"]["data"] == [["film", 0.7]]
    # Nothing picked: the preset holds no LoRAs (and so leaves them alone when loaded).
    none = lora_actions.save_as("No film", None, lora_page(), ANN)
    assert "loras" not in json.loads(none.active.path.read_text())
    # Overwrite stores them too.
    done = lora_actions.confirm("No film", None, lora_page(["film"], [["film", 1.5]]), ANN)
    assert json.loads(done.active.path.read_text())["loras"] == [{"name": "film", "weight": 1.5}]


def test_unknown_lora_in_a_preset_is_a_note(lora_actions):
    lora_actions.store_for(ANN).save(presets.from_dict(
        {"name": "Mixed", "loras": [{"name": "gone", "weight": 0.5},
                                    {"name": "film", "weight": 0.9}]}))
    loaded = lora_actions.load("Mixed", None, lora_page(), ANN)
    assert loaded.values["loras"]["value"] == ["film"]
    assert loaded.values["lora_weights"]["value"]["data"] == [["film", 0.9]]
    assert "'gone' is not in" in loaded.view.status and "left out" in loaded.view.status


def test_without_lora_controls_a_preset_s_loras_are_not_applied(actions):
    actions.store_for(ANN).save(presets.from_dict(
        {"name": "Filmic", "loras": [{"name": "film", "weight": 0.6}]}))
    loaded = actions.load("Filmic", None, page(), ANN)
    assert loaded.values == {} and "loras" in loaded.view.status
