"""Presets: validation (file and field named in every error), the shipped set against the guide,
the store (save-as, overwrite, delete, export, import, per-user folders), atomic writes, unsafe
names, styles.csv import and the CLI's --preset / import-styles."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from PIL import Image
from pydantic import Field

from webui import files
from webui import params as P
from webui import presets
from webui.__main__ import main
from webui.presets import (
    Preset,
    PresetError,
    PresetExists,
    PresetNotFound,
    PresetReadOnly,
    PresetStore,
    apply,
    band_hint,
    from_dict,
    parse,
    slugify,
    startup_params,
)

SHIPPED_FILES = sorted(presets.SHIPPED_DIR.glob("*.json"))
GUIDE_SAMPLERS = {"Euler a", "DPM++ 2M Karras"}


@pytest.fixture
def store(tmp_path) -> PresetStore:
    return PresetStore(tmp_path / "user-presets")


def _raw(**settings) -> dict:
    return {"schema_version": 1, "name": "Mine", **settings}


def _bytes(**settings) -> bytes:
    return json.dumps(_raw(**settings)).encode()


def _shipped(name: str) -> Preset:
    return PresetStore(Path("/nonexistent-user-dir")).get(name)


# -- the shipped set -------------------------------------------------------------------------
def test_shipped_set_is_complete_and_loads_without_broken_files(store):
    listing = store.list()
    assert listing.broken == []
    assert len(SHIPPED_FILES) == 10
    assert all(p.shipped and p.read_only for p in listing.presets)
    for name in ["Balanced — start here", "Subtle style transfer", "Van Gogh style",
                 "Scene alteration — rainy neon night", "Sketch to photo", "Total overhaul",
                 "Strict prompt", "Loose and dreamy", "Sharpen a blurry result", "Low VRAM"]:
        assert listing.find(name) is not None, name


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.stem)
def test_shipped_preset_follows_the_guide(path):
    raw = json.loads(path.read_text("utf-8"))
    preset = parse(path.read_bytes(), path.name)
    assert path.stem == slugify(preset.name)
    assert raw["schema_version"] == presets.SCHEMA_VERSION
    assert preset.description
    s = preset.settings
    if "strength" in s:
        assert preset.band in P.BANDS, "a preset that sets strength declares its band"
    if preset.band:
        lo, hi = P.BANDS[preset.band]
        assert lo <= s["strength"] <= hi
    if "guidance_scale" in s:
        assert 5 <= s["guidance_scale"] <= 10
    if "scheduler" in s:
        assert s["scheduler"] in GUIDE_SAMPLERS
    if "steps" in s:
        assert 20 <= s["steps"] <= 50
        # Low strength runs few real steps; every preset must still denoise properly.
        assert int(s["steps"] * s["strength"]) >= 10
    if "negative_prompt" in s:
        assert P.STANDARD_NEGATIVE in s["negative_prompt"]
        assert "{standard_negative}" in raw["negative_prompt"]
    apply(preset, P.GenerationParams(), "a photo of a dog")  # applies cleanly


def test_shipped_presets_match_their_guide_advice():
    balanced = _shipped("Balanced — start here").settings
    assert (balanced["strength"], balanced["guidance_scale"]) == (0.65, 7.0)
    subtle = _shipped("Subtle style transfer")
    assert subtle.band == "subtle" and 0.1 <= subtle.settings["strength"] <= 0.4
    assert "watercolor" in subtle.prompt_template
    assert _shipped("Van Gogh style").band == "medium"
    scene = _shipped("Scene alteration — rainy neon night")
    assert scene.band == "medium" and "neon" in scene.prompt_template
    sketch = _shipped("Sketch to photo")
    assert 0.7 <= sketch.settings["strength"] <= 1.0
    assert sketch.settings["steps"] > balanced["steps"]
    assert "highly detailed" in sketch.prompt_template
    overhaul = _shipped("Total overhaul")
    assert overhaul.band == "overhaul" and 0.7 <= overhaul.settings["strength"] <= 1.0
    assert 9 <= _shipped("Strict prompt").settings["guidance_scale"] <= 10
    assert 5 <= _shipped("Loose and dreamy").settings["guidance_scale"] <= 6
    sharpen = _shipped("Sharpen a blurry result")
    assert 30 <= sharpen.settings["steps"] <= 40
    assert "highly detailed, sharp focus, intricate details" in sharpen.prompt_template
    low = _shipped("Low VRAM").settings
    assert all(low[k] == "on" for k in ("attention_slicing", "vae_tiling", "cpu_offload"))


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, field, words", [
    ({"cfg": 7}, "cfg", "did you mean"),
    ({"sampler": "Euler a"}, "sampler", "unknown key"),
    ({"strength": "0.5"}, "strength", "number from 0 to 1"),
    ({"strength": True}, "strength", "number"),
    ({"strength": 1.5}, "strength", "from 0 to 1"),
    ({"guidance_scale": -1}, "guidance_scale", "from 0 to 30"),
    ({"steps": 25.5}, "steps", "whole number"),
    ({"steps": 0}, "steps", "from 1 to 150"),
    ({"scheduler": "Fastest"}, "scheduler", "must be one of"),
    ({"resize_mode": "squash"}, "resize_mode", "must be one of"),
    ({"cpu_offload": True}, "cpu_offload", "must be one of"),
    ({"negative_prompt": 3}, "negative_prompt", "text"),
    ({"prompt": "a cat"}, "prompt", "prompt_template"),
    ({"prompt_template": "no placeholder"}, "prompt_template", "exactly once"),
    ({"prompt_template": "{prompt} and {prompt}"}, "prompt_template", "exactly once"),
    ({"band": "huge"}, "band", "subtle, medium, overhaul"),
    ({"description": ["x"]}, "description", "text"),
    ({"schema_version": "1"}, "schema_version", "whole number"),
    ({"schema_version": 0}, "schema_version", "whole number"),
    ({"name": 5}, "name", "text"),
])
def test_bad_values_name_the_file_and_the_field(settings, field, words):
    with pytest.raises(PresetError) as caught:
        parse(_bytes(**settings), "mine.json")
    err = caught.value
    assert (err.file, err.field) == ("mine.json", field)
    assert str(err).startswith("mine.json: ")
    assert field in str(err) and words in str(err)


def test_newer_schema_version_is_a_clear_error_even_with_new_keys():
    with pytest.raises(PresetError, match="newer version of the studio") as caught:
        parse(_bytes(schema_version=2, future_knob=3), "new.json")
    assert caught.value.field == "schema_version"


@pytest.mark.parametrize("data, words", [
    (b"{not json", "not valid JSON"),
    (b'{"name": "x", "strength": NaN}', "NaN"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe\x00", "UTF-8"),
    (b'{"schema_version": 1}', "name is missing"),
    (b" " * (presets.MAX_FILE_BYTES + 1), "too large"),
    # Once a RecursionError out of the decoder: nesting deeper than it recurses.
    (b'{"name": "x", "a": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deeply"),
])
def test_unreadable_files_name_the_file(data, words):
    with pytest.raises(PresetError, match=words) as caught:
        parse(data, "bad.json")
    assert caught.value.file == "bad.json"


def test_settings_are_normalised_and_version_defaults_to_current():
    preset = from_dict({"name": "n", "scheduler": "dpm++ 2m karras", "width": 515,
                        "guidance_scale": 7})
    assert preset.settings == {"scheduler": "DPM++ 2M Karras", "width": 512, "guidance_scale": 7.0}


def test_a_field_added_to_generation_params_is_accepted_without_changes(monkeypatch):
    class Extended(P.GenerationParams):
        pag_scale: float = Field(0.0, ge=0.0, le=10.0, description="test-only field")

    monkeypatch.setattr(P, "GenerationParams", Extended)
    preset = from_dict({"name": "pag", "pag_scale": 3})
    assert apply(preset, Extended(), None).pag_scale == 3.0
    with pytest.raises(PresetError) as caught:
        from_dict({"name": "pag", "pag_scale": 11}, "pag.json")
    assert caught.value.field == "pag_scale" and "from 0 to 10" in str(caught.value)


def test_standard_negative_placeholder_expands_and_is_written_back():
    preset = from_dict({"name": "n", "negative_prompt": "{standard_negative}, nsfw"})
    assert preset.settings["negative_prompt"] == P.STANDARD_NEGATIVE + ", nsfw"
    assert preset.to_dict()["negative_prompt"] == "{standard_negative}, nsfw"
    assert parse(preset.to_json()) == preset


# -- apply and hints -------------------------------------------------------------------------
def test_apply_fills_named_fields_and_keeps_the_others():
    preset = from_dict({"name": "n", "strength": 0.3, "scheduler": "DPM++ 2M Karras",
                        "prompt_template": "{prompt}, watercolor"})
    before = P.make(prompt="old", seed=42, steps=33, guidance_scale=8, strength=0.9)
    after = apply(preset, before, "a {weird} cat")
    assert (after.strength, after.scheduler) == (0.3, "DPM++ 2M Karras")
    assert (after.seed, after.steps, after.guidance_scale) == (42, 33, 8.0)
    assert after.prompt == "a {weird} cat, watercolor"
    assert apply(preset, before, None).prompt == "old"
    assert apply(preset, before, "").prompt == "watercolor"
    assert apply(from_dict({"name": "plain"}), before, "x").prompt == "x"


def test_band_hint_is_one_gentle_line_only_when_outside():
    van_gogh = _shipped("Van Gogh style")
    inside = apply(van_gogh, P.GenerationParams(), None)
    assert band_hint(van_gogh, inside) is None
    assert band_hint(None, inside) is None
    strength = band_hint(van_gogh, inside.replace(strength=0.9))
    assert "medium strength (0.4–0.7)" in strength and "strength 0.9" in strength
    both = band_hint(_shipped("Strict prompt"), inside.replace(strength=0.2, guidance_scale=7))
    assert "CFG 9–10" in both and "strength 0.2" in both and "\n" not in both
    loose = _shipped("Loose and dreamy")
    assert "CFG 5–6" in band_hint(loose, inside.replace(guidance_scale=12))
    assert band_hint(_shipped("Low VRAM"), inside.replace(strength=1.0)) is None
    unbanded = from_dict({"name": "n", "strength": 0.2})  # band follows the strength it sets
    assert "subtle" in band_hint(unbanded, inside.replace(strength=0.8))
    between = from_dict({"name": "n", "guidance_scale": 8.5})  # outside the guide's ranges
    assert band_hint(between, inside.replace(guidance_scale=9)) is None
    assert "CFG 7.5–9.5" in band_hint(between, inside.replace(guidance_scale=12))


# -- the store -------------------------------------------------------------------------------
def test_save_as_list_load_export_and_delete(store):
    params = P.make(strength=0.3, guidance_scale=6, seed=5, prompt="mine",
                    negative_prompt=P.STANDARD_NEGATIVE)
    saved = store.save_params("My watercolour", params, description="soft",
                              prompt_template="{prompt}, watercolour")
    assert saved.path == store.user_dir / "my-watercolour.json" and not saved.read_only
    on_disk = json.loads(saved.path.read_text("utf-8"))
    assert on_disk["negative_prompt"] == "{standard_negative}"
    assert "prompt" not in on_disk and "seed" not in on_disk and "model" not in on_disk
    assert on_disk["width"] is None  # "keep the init image's size" is a setting too
    assert on_disk["band"] == "subtle"
    listing = store.list()
    assert listing.names()[-1] == "My watercolour"
    assert sum(not p.shipped for p in listing.presets) == 1
    loaded = store.get("my watercolour")
    assert apply(loaded, P.GenerationParams(), "cat").strength == 0.3
    assert parse(store.export("My watercolour")) == loaded
    assert parse(store.export("Van Gogh style")).name == "Van Gogh style"
    store.delete("My watercolour")
    assert not saved.path.exists()
    with pytest.raises(PresetNotFound, match="Balanced"):
        store.get("My watercolour")


def test_overwrite_needs_the_explicit_flag(store):
    store.save(from_dict({"name": "Mine", "strength": 0.5}))
    with pytest.raises(PresetExists, match="overwrite"):
        store.save(from_dict({"name": "MINE", "strength": 0.6}))
    store.save(from_dict({"name": "Mine", "strength": 0.6}), overwrite=True)
    assert store.get("Mine").settings["strength"] == 0.6
    assert len(list(store.user_dir.iterdir())) == 1


@pytest.mark.parametrize("name", ["Van Gogh style", "van gogh STYLE", "Van-Gogh  style!"])
def test_shipped_presets_cannot_be_replaced_or_deleted(store, name):
    with pytest.raises(PresetExists, match="shipped"):
        store.save(from_dict({"name": name, "strength": 0.5}), overwrite=True)
    with pytest.raises(PresetReadOnly):
        store.delete(name)
    assert not store.user_dir.exists() or not any(store.user_dir.iterdir())


def test_delete_of_a_missing_preset(store):
    with pytest.raises(PresetNotFound):
        store.delete("nothing here")


def test_broken_files_are_listed_and_never_stop_the_listing(store):
    store.save(from_dict({"name": "Good", "steps": 30}))
    folder = store.user_dir
    (folder / "garbled.json").write_text("{oops", "utf-8")
    (folder / "typo.json").write_text(json.dumps(_raw(name="Typo", strenght=0.5)), "utf-8")
    (folder / "future.json").write_text(json.dumps(_raw(name="Future", schema_version=9)), "utf-8")
    (folder / "clash.json").write_text(json.dumps(_raw(name="Total overhaul")), "utf-8")
    (folder / ".good.123.tmp").write_text("{half", "utf-8")  # a crashed write
    (folder / "notes.txt").write_text("not a preset", "utf-8")
    listing = store.list()
    assert [p.name for p in listing.presets if not p.shipped] == ["Good"]
    reasons = {b.path.name: b.reason for b in listing.broken}
    assert set(reasons) == {"garbled.json", "typo.json", "future.json", "clash.json"}
    assert reasons["garbled.json"].startswith("garbled.json: not valid JSON")
    assert "strenght" in reasons["typo.json"] and "strength" in reasons["typo.json"]
    assert "newer version" in reasons["future.json"]
    assert "shipped" in reasons["clash.json"]
    with pytest.raises(PresetError, match="broken") as caught:
        store.get("typo")
    assert caught.value.file == "typo.json"
    store.delete("garbled")  # a broken user file can still be removed
    assert not (folder / "garbled.json").exists()


def test_a_broken_shipped_file_is_listed_not_raised(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "ok.json").write_text(json.dumps(_raw(name="OK")), "utf-8")
    (shipped / "bad.json").write_text(json.dumps(_raw(name="Bad", steps=-3)), "utf-8")
    store = PresetStore(tmp_path / "users", shipped_dir=shipped)
    listing = store.list()
    assert listing.names() == ["OK"]
    assert listing.broken[0].shipped and "steps" in listing.broken[0].reason
    with pytest.raises(PresetExists, match="shipped"):
        store.save(from_dict({"name": "bad"}))  # the shipped name stays reserved while broken


def test_import_validates_and_handles_name_collisions(store):
    with pytest.raises(PresetError) as caught:
        store.import_bytes(_bytes(strength=7), "upload.json")
    assert (caught.value.file, caught.value.field) == ("upload.json", "strength")
    first = store.import_bytes(_bytes(strength=0.5), "mine.json")
    assert first.name == "Mine" and not first.shipped
    with pytest.raises(PresetExists):
        store.import_bytes(_bytes(strength=0.6))
    assert store.import_bytes(_bytes(strength=0.6), on_conflict="skip") is None
    assert store.import_bytes(_bytes(strength=0.6), on_conflict="rename").name == "Mine (2)"
    assert store.import_bytes(_bytes(strength=0.6), on_conflict="rename").name == "Mine (3)"
    store.import_bytes(_bytes(strength=0.7), on_conflict="overwrite")
    assert store.get("Mine").settings["strength"] == 0.7
    shipped_name = json.dumps(_raw(name="Strict prompt", guidance_scale=9)).encode()
    with pytest.raises(PresetExists, match="shipped"):
        store.import_bytes(shipped_name, on_conflict="overwrite")
    with pytest.raises(PresetExists):
        store.import_bytes(shipped_name)
    assert store.import_bytes(shipped_name, on_conflict="rename").name == "Strict prompt (2)"
    assert store.get("Strict prompt").shipped


# -- unsafe names ----------------------------------------------------------------------------
BAD_NAMES = ["", "   ", "../evil", "..", "../../etc/passwd", ".hidden", "a/b", "a\\b",
             "/abs/path", "C:\\Windows", "C:evil", "CON", "nul", "Aux.json", "com1", "LPT9",
             "x" * (presets.MAX_NAME_LENGTH + 1), "tab\tname", "nul\x00byte", "ends with dot."]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_cannot_escape_or_be_reserved(store, tmp_path, name):
    params = P.GenerationParams()
    with pytest.raises(PresetError) as caught:
        store.save_params(name, params)
    assert caught.value.field == "name"
    with pytest.raises(PresetError):
        store.import_bytes(json.dumps(_raw(name=name)).encode())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


def test_odd_but_safe_names_stay_inside_the_folder(store):
    for name in ["Wet: rainy night?", "水彩", "★★★", "名前 — two", "Crème brûlée", "Con artist"]:
        saved = store.save_params(name, P.GenerationParams())
        assert saved.path.parent == store.user_dir
        assert store.get(name).name == name
    assert slugify("Balanced — start here") == "balanced-start-here"
    assert slugify("Crème brûlée") == "creme-brulee"
    assert slugify("★★★").startswith("preset-")


# -- users -----------------------------------------------------------------------------------
def test_each_user_sees_only_their_own_presets(tmp_path):
    root = tmp_path / "user-presets"
    alice = PresetStore(root, user="alice")
    bob = PresetStore(root).for_user("bob")
    anonymous = PresetStore(root)
    alice.save(from_dict({"name": "Alice's look", "strength": 0.3}))
    assert alice.user_dir.parent == root and alice.user_dir != bob.user_dir
    assert "Alice's look" in alice.names()
    for other in (bob, anonymous):
        assert "Alice's look" not in other.names()
        with pytest.raises(PresetNotFound):
            other.get("Alice's look")
        with pytest.raises(PresetNotFound):
            other.delete("Alice's look")
        assert "Balanced — start here" in other.names()  # shipped presets are shared
    bob.save(from_dict({"name": "Alice's look", "strength": 0.9}))  # same name, separate folder
    assert alice.get("Alice's look").settings["strength"] == 0.3


@pytest.mark.parametrize("user", ["../../escape", "/etc", "CON", "Bob", "bob", "名前", "a\\b"])
def test_user_folders_are_safe_and_distinct(tmp_path, user):
    store = PresetStore(tmp_path, user=user)
    assert store.user_dir.parent == tmp_path
    assert store.user_dir.name.isascii() and "/" not in store.user_dir.name
    assert store.user_dir.name.upper() not in presets.RESERVED_NAMES
    assert PresetStore(tmp_path, user="bob").user_dir != PresetStore(tmp_path, user="Bob").user_dir
    with pytest.raises(ValueError):
        PresetStore(tmp_path, user="")


# -- atomic writes ---------------------------------------------------------------------------
def test_simultaneous_save_as_lets_exactly_one_win(store):
    results: list[str] = []
    barrier = threading.Barrier(12)

    def save(i: int) -> None:
        barrier.wait()
        try:
            store.save(from_dict({"name": "Race", "steps": 10 + i}))
            results.append("saved")
        except PresetExists:
            results.append("exists")

    threads = [threading.Thread(target=save, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("saved") == 1 and results.count("exists") == 11
    assert [p.name for p in store.user_dir.iterdir()] == ["race.json"]
    assert store.get("Race").settings["steps"] in range(10, 22)


def test_simultaneous_overwrites_leave_one_whole_file(store):
    big = "x" * 15_000  # large enough that a torn write would show
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            for _ in range(5):
                store.save(from_dict({"name": "Race", "steps": 10 + i,
                                      "negative_prompt": f"{i}{big}"}), overwrite=True)
        except PresetExists:
            pass  # two first-time writers: the loser may see the name already taken
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    preset = store.get("Race")
    assert preset.settings["negative_prompt"] == f"{preset.settings['steps'] - 10}{big}"
    assert [p.name for p in store.user_dir.iterdir()] == ["race.json"]


def _crash_midway(handle, data: bytes) -> None:
    handle.write(data[: len(data) // 2])
    raise OSError("disk full (simulated)")


def test_a_crash_while_saving_leaves_no_partial_preset(store, monkeypatch):
    monkeypatch.setattr(files, "_write_bytes", _crash_midway)
    with pytest.raises(OSError, match="simulated"):
        store.save(from_dict({"name": "Crash", "steps": 30}))
    assert not (store.user_dir / "crash.json").exists()
    assert list(store.user_dir.iterdir()) == []  # the temp file is cleaned up too
    assert "Crash" not in store.names()


def test_a_crash_while_overwriting_keeps_the_old_preset(store, monkeypatch):
    store.save(from_dict({"name": "Keep", "steps": 30}))
    monkeypatch.setattr(files, "_write_bytes", _crash_midway)
    with pytest.raises(OSError):
        store.save(from_dict({"name": "Keep", "steps": 45}), overwrite=True)
    assert store.get("Keep").settings["steps"] == 30
    assert [p.name for p in store.user_dir.iterdir()] == ["keep.json"]
    assert store.list().broken == []


# -- start-up --------------------------------------------------------------------------------
def test_startup_params_from_a_preset(store):
    params = startup_params("Strict prompt", store)
    assert params.guidance_scale == 9.5 and params.prompt == ""
    assert params.seed == P.default("seed")
    with pytest.raises(PresetNotFound, match="Balanced — start here"):
        startup_params("No such preset", store)


# -- styles.csv ------------------------------------------------------------------------------
STYLES = (
    "\ufeffname,prompt,negative_prompt,description\n"
    'Cinematic,"{prompt}, cinematic still, film grain",lowres,extra column is ignored\n'
    "Oil,oil painting,,\n"
    'Clean,,"blurry, bad anatomy, ugly, tiling, poorly drawn hands, poorly drawn feet, '
    "poorly drawn face, out of frame, extra limbs, disfigured, deformed, body out of frame, bad "
    "art, extra fingers, mutated hands, watermark, grainy, signature, cut off, draft, text\",\n"
    ",orphan prompt,,\n"
    "Empty,,,\n"
    'Twice,"{prompt} and {prompt}",,\n'
    '../escape,"x",,\n'
    'Multi,"line one\nline two",,\n'
)


def test_styles_csv_becomes_presets(store):
    report = presets.import_styles(STYLES.encode("utf-8"), store, file="styles.csv")
    names = [p.name for p in report.imported]
    assert names == ["Cinematic", "Oil", "Clean", "Multi"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"Empty", "Twice", "../escape"}
    assert "exactly once" in skipped["Twice"]
    params = P.GenerationParams()
    assert apply(store.get("Cinematic"), params, "a fox").prompt == "a fox, cinematic still, film grain"
    assert apply(store.get("Cinematic"), params, "a fox").negative_prompt == "lowres"
    assert apply(store.get("Oil"), params, "a fox").prompt == "a fox, oil painting"
    clean = json.loads((store.user_dir / "clean.json").read_text("utf-8"))
    assert clean["negative_prompt"] == "{standard_negative}, text"
    assert "prompt_template" not in clean
    assert apply(store.get("Multi"), params, "p").prompt == "p, line one\nline two"
    again = presets.import_styles(STYLES, store)
    assert again.imported == [] and "already exists" in dict(again.skipped)["Oil"]


@pytest.mark.parametrize("on_conflict", ["skip", "rename", "overwrite"])
def test_importing_many_styles_reads_the_presets_once(store, monkeypatch, on_conflict):
    """An import of n styles read every preset file again for each style (n² reads: 1000
    rows took minutes); now it lists the store once, whatever the conflicts."""
    rows = "name,prompt,negative_prompt\n" + "".join(f"Style {k},look {k},\n" for k in range(60))
    presets.import_styles(rows.encode(), store)  # half of them exist on the second run
    scans = []
    real = presets.PresetStore._scan
    monkeypatch.setattr(presets.PresetStore, "_scan",
                        lambda self, *a, **k: scans.append(1) or real(self, *a, **k))
    more = rows + "".join(f"New {k},fresh {k},\n" for k in range(60))
    report = presets.import_styles(more.encode(), store, on_conflict=on_conflict)
    assert len(scans) <= 2  # one listing: the shipped folder and the user's
    new = [p.name for p in report.imported if p.name.startswith("New")]
    assert len(new) == 60
    expected = {"skip": 120, "rename": 180, "overwrite": 120}[on_conflict]
    monkeypatch.undo()
    assert len([n for n in store.names() if n.startswith(("Style", "New"))]) == expected


def test_styles_csv_without_a_name_column_is_an_error():
    with pytest.raises(PresetError, match="'name' column") as caught:
        presets.styles_to_presets("title,prompt\nx,y\n", "mine.csv")
    assert caught.value.file == "mine.csv"


def test_import_styles_command(tmp_path, capsys):
    csv_file = tmp_path / "styles.csv"
    csv_file.write_text(STYLES, "utf-8")
    folder = tmp_path / "mine"
    assert main(["import-styles", str(csv_file), "--user-presets", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert "imported: Cinematic" in out and "4 imported, 3 skipped" in err
    assert (folder / "cinematic.json").is_file()
    assert main(["import-styles", str(tmp_path / "missing.csv")]) == 2


# -- the CLI ---------------------------------------------------------------------------------
@pytest.fixture
def init_image(tmp_path) -> Path:
    path = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(path)
    return path


def test_generate_with_a_preset_and_an_explicit_flag_winning(tmp_path, init_image, capsys):
    folder = tmp_path / "user-presets"
    PresetStore(folder).save(from_dict({
        "name": "CLI test", "strength": 0.6, "guidance_scale": 8.5, "steps": 40,
        "scheduler": "DPM++ 2M Karras", "negative_prompt": "{standard_negative}",
        "prompt_template": "{prompt}, oil painting"}))
    out = tmp_path / "out.png"
    code = main(["generate", "--init", str(init_image), "--preset", "CLI test",
                 "--user-presets", str(folder), "--prompt", "a fox", "--strength", "0.8",
                 "--steps", "2", "--width", "64", "--height", "64", "--seed", "1",
                 "--out", str(out), "--models-dir", str(tmp_path / "models"),
                 "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.is_file()
    assert "a fox, oil painting\n" in text
    assert f"Negative prompt: {P.STANDARD_NEGATIVE}" in text
    assert "Denoising strength: 0.8" in text  # the explicit flag won
    assert "Steps: 2," in text
    assert "CFG scale: 8.5" in text and "Sampler: DPM++ 2M, Schedule type: Karras" in text


def test_generate_with_an_unknown_preset_fails_cleanly(tmp_path, init_image, capsys):
    code = main(["generate", "--init", str(init_image), "--preset", "Nope",
                 "--user-presets", str(tmp_path)])
    assert code == 2
    assert "--preset: no preset named 'Nope'" in capsys.readouterr().err


def test_the_preset_module_needs_neither_torch_nor_gradio():
    import subprocess
    import sys

    code = ("import sys, webui.presets; "
            "print(sorted(m for m in ('torch', 'gradio', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_user_keeps_a_bounded_number_of_presets(tmp_path):
    # A visitor of a shared studio could otherwise save presets until the disk is full.
    alice = PresetStore(tmp_path / "users", user="alice", max_presets=3)
    for n in range(3):
        alice.save_params(f"look {n}", P.GenerationParams())
    with pytest.raises(PresetError) as info:
        alice.save_params("one more", P.GenerationParams())
    assert info.value.field == "name" and "(3)" in str(info.value)
    assert "one more" not in alice.names()
    # Replacing one of them is not a new one; another user has a quota of their own.
    alice.save_params("look 0", P.GenerationParams(steps=12), overwrite=True)
    assert alice.get("look 0").settings["steps"] == 12
    alice.for_user("bob").save_params("bob's", P.GenerationParams())
    report = presets.import_styles("name,prompt,negative_prompt\nx,a,b\ny,c,d\n", alice)
    assert not report.imported and all("delete some" in why for _, why in report.skipped)
    alice.delete("look 1")
    alice.save_params("one more", P.GenerationParams())
    assert "one more" in alice.names()


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_atomic_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch, overwrite):
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        synced.append("folder" if stat.S_ISDIR(mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "presets" / "look.json"
    files.write_atomic(target, b'{"name": "look"}', overwrite=overwrite)
    assert target.read_bytes() == b'{"name": "look"}'
    # The data reaches the disk before the name does, and then the name itself.
    assert synced == ["file", "folder"]
    assert [p.name for p in target.parent.iterdir()] == ["look.json"]  # no temp file left
