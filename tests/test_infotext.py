"""Infotext: format/parse round trips, text written by other SD tools, and warnings (not
exceptions) for values this studio cannot use."""

from __future__ import annotations

import pytest

from webui import infotext, schedulers
from webui.bench import adversarial_texts
from webui.params import GenerationParams, make

ROUND_TRIP = {
    "multi-line and punctuation": make(
        prompt='line one\nline two, with "quotes", and: a colon\n\nafter a blank line',
        negative_prompt="bad, ugly\nworse: \"much\"", scheduler="DPM++ 2M SDE Karras", steps=33,
        strength=0.35, guidance_scale=7.5, seed=99, width=640, height=448,
        resize_mode="crop and resize", batch_size=2, dtype="bf16", model='my, model: "x"'),
    "defaults": make(seed=0),
    "unicode": make(prompt="café — 東京, ünïcode ✓", negative_prompt="😀", scheduler="Euler a",
                    seed=123456789, width=64, height=64),
    "karras extremes": make(prompt="a", scheduler="DPM2 a Karras", strength=1.0, guidance_scale=0.0,
                            steps=150, seed=2**32 - 1, width=4096, height=4096),
    "fill and small strength": make(prompt="p", scheduler="LMS Karras", strength=0.05,
                                    guidance_scale=12.5, steps=1, seed=5,
                                    resize_mode="resize and fill", dtype="fp32"),
    "windows path model": make(prompt="x", model=r"C:\models\sd15\v1-5.safetensors",
                               scheduler="DPM++ 2M Karras", seed=7),
}


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip(name):
    params = ROUND_TRIP[name]
    text = infotext.format(params, seed=params.seed + 1 if params.seed < 2**32 - 1 else 0,
                           width=params.width or 512, height=params.height or 768)
    parsed = infotext.parse(text)
    assert parsed.warnings == []
    expected = params.replace(seed=params.seed + 1 if params.seed < 2**32 - 1 else 0,
                              width=params.width or 512, height=params.height or 768)
    assert parsed.params == expected
    assert parsed.extras.get("Version") == infotext.VERSION


def test_format_layout():
    params = make(prompt="a red fox", negative_prompt="blurry", scheduler="DPM++ 2M Karras",
                  steps=30, strength=0.65, guidance_scale=7.0, seed=-1)
    text = infotext.format(params, seed=42, width=512, height=768, model_name="sd15",
                           model_hash="abcdef1234")
    lines = text.splitlines()
    assert lines[0] == "a red fox"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
                               "Seed: 42, Size: 512x768, Model hash: abcdef1234, Model: sd15, "
                               "Denoising strength: 0.65")
    assert len(lines) == 3


def test_format_extra_keys_and_actual_seed():
    params = make(prompt="x", seed=-1)
    text = infotext.format(params, seed=77, width=64, height=64, extra={"Lora hashes": "a: 1, b: 2"})
    assert "Seed: 77" in text and "Seed: -1" not in text
    parsed = infotext.parse(text)
    assert parsed.params.seed == 77
    assert parsed.extras["Lora hashes"] == "a: 1, b: 2"


@pytest.mark.parametrize("name", schedulers.all_names())
def test_every_scheduler_name_round_trips(name):
    canonical = schedulers.canonical(name)
    text = infotext.format(make(prompt="p", scheduler=name), seed=1, width=64, height=64)
    parsed = infotext.parse(text, base=make(scheduler="DDIM" if canonical != "DDIM" else "Euler"))
    assert parsed.params.scheduler == canonical
    assert "scheduler" in parsed.fields
    assert parsed.warnings == []


# -- text written by other SD tools --------------------------------------------------------------------
OTHER_TOOL_IMG2IMG = """masterpiece, best quality, 1girl, (smile:1.2), <lora:add_detail:0.8>
Negative prompt: (worst quality:1.4), lowres, bad hands, easynegative
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, \
Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.55, \
Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03, \
badhand: 7a8b9c", Face fix prompt: "a \\"smiling\\" face, detailed", Version: v1.10.1"""

OTHER_TOOL_OLD_STYLE = """a castle on a hill, sunset
Negative prompt: blurry
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: e1441589a6, \
Model: sd_xl_base_1.0, Denoising strength: 0.3, Version: v1.6.0"""

OTHER_TOOL_TXT2IMG = """portrait of an astronaut, oil painting
Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 8, Seed: 3000000000, \
Size: 640x832, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Hires upscale: 2, Hires steps: 10, \
Hires upscaler: Latent, Version: f2.0.1v1.10.1-previous-313-g8a042934"""


def test_other_tool_img2img_text():
    parsed = infotext.parse(OTHER_TOOL_IMG2IMG)
    p = parsed.params
    assert p.prompt == "masterpiece, best quality, 1girl, (smile:1.2), <lora:add_detail:0.8>"
    assert p.negative_prompt == "(worst quality:1.4), lowres, bad hands, easynegative"
    assert (p.steps, p.scheduler, p.guidance_scale, p.seed) == (30, "DPM++ 2M Karras", 6.5, 1234567890)
    assert (p.width, p.height, p.strength) == (512, 768, 0.55)
    assert p.model == "v1-5-pruned-emaonly"
    assert parsed.warnings == []
    # Keys this studio does not use are kept, quoted values unquoted.
    assert parsed.extras["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed.extras["TI hashes"] == "easynegative: c74b4e810b03, badhand: 7a8b9c"
    assert parsed.extras["Face fix prompt"] == 'a "smiling" face, detailed'
    assert parsed.extras["Clip skip"] == "2"
    assert parsed.extras["Version"] == "v1.10.1"
    assert parsed.extras["Model hash"] == "6ce0161689"
    assert "Schedule type" not in parsed.extras


def test_other_tool_old_style_karras_sampler():
    parsed = infotext.parse(OTHER_TOOL_OLD_STYLE)
    assert parsed.params.scheduler == "DPM++ 2M Karras"
    assert parsed.params.strength == 0.3
    assert parsed.params.negative_prompt == "blurry"
    assert parsed.warnings == []


def test_other_tool_txt2img_text_keeps_strength():
    base = make(strength=0.4, resize_mode="crop and resize")
    parsed = infotext.parse(OTHER_TOOL_TXT2IMG, base=base)
    assert parsed.params.strength == 0.4
    assert parsed.params.resize_mode == "crop and resize"
    assert "strength" not in parsed.fields
    assert parsed.params.seed == 3_000_000_000
    assert (parsed.params.width, parsed.params.height) == (640, 832)
    assert parsed.params.scheduler == "Euler a"
    assert parsed.params.negative_prompt == ""
    assert "negative_prompt" not in parsed.fields
    assert parsed.extras["Hires upscaler"] == "Latent"
    assert parsed.warnings == []


def test_fields_lists_only_what_the_text_set():
    parsed = infotext.parse(OTHER_TOOL_TXT2IMG)
    assert parsed.fields == {"prompt", "steps", "scheduler", "guidance_scale", "seed", "width",
                             "height", "model"}
    parsed = infotext.parse(OTHER_TOOL_IMG2IMG)
    assert parsed.fields == {"prompt", "negative_prompt", "steps", "scheduler", "guidance_scale",
                             "seed", "width", "height", "model", "strength"}


def test_prompt_only_text():
    base = make(steps=40, seed=9)
    parsed = infotext.parse("just a prompt, with a comma\nand a second line", base=base)
    assert parsed.params.prompt == "just a prompt, with a comma\nand a second line"
    assert parsed.fields == {"prompt"}
    assert (parsed.params.steps, parsed.params.seed) == (40, 9)
    assert parsed.extras == {} and parsed.warnings == []


def test_unknown_sampler_is_a_warning():
    text = "a\nSteps: 20, Sampler: Restart, CFG scale: 7, Seed: 1, Size: 512x512"
    parsed = infotext.parse(text, base=make(scheduler="DDIM"))
    assert parsed.params.scheduler == "DDIM"
    assert "scheduler" not in parsed.fields
    assert len(parsed.warnings) == 1
    assert "Restart" in parsed.warnings[0]
    assert parsed.params.steps == 20  # the rest is still read


@pytest.mark.parametrize("setting,field,kept,range_text", [
    ("CFG scale: 40", "guidance_scale", 9.0, "from 0 to 30"),
    ("Steps: 500", "steps", 33, "from 1 to 150"),
    ("Denoising strength: 2", "strength", 0.45, "from 0 to 1"),
    ("Seed: -5", "seed", 17, "from -1 to 4294967295"),
    ("Batch size: 64", "batch_size", 2, "from 1 to 8"),
    ("Steps: many", "steps", 33, "from 1 to 150"),
])
def test_out_of_range_value_is_a_warning_and_keeps_the_field(setting, field, kept, range_text):
    base = make(guidance_scale=9, steps=33, strength=0.45, seed=17, batch_size=2)
    others = [s for s in ("Steps: 20", "CFG scale: 7", "Seed: 1") if s.split(":")[0] != setting.split(":")[0]]
    text = "a prompt\n" + ", ".join([setting, *others, "Size: 512x512"])
    parsed = infotext.parse(text, base=base)
    assert getattr(parsed.params, field) == kept
    assert field not in parsed.fields
    assert len(parsed.warnings) == 1
    assert field in parsed.warnings[0] and range_text in parsed.warnings[0]
    assert (parsed.params.width, parsed.params.height) == (512, 512)  # the rest still applies


def test_bad_size_is_a_warning():
    base = make(width=256, height=320)
    parsed = infotext.parse("p\nSteps: 20, Sampler: Euler, Size: 512 by 512, Seed: 3", base=base)
    assert (parsed.params.width, parsed.params.height) == (256, 320)
    assert any("Size" in w for w in parsed.warnings)
    parsed = infotext.parse("p\nSteps: 20, Sampler: Euler, Size: 32x32, Seed: 3", base=base)
    assert (parsed.params.width, parsed.params.height) == (256, 320)
    assert any("from 64 to 4096" in w for w in parsed.warnings)


def test_parse_of_nothing():
    parsed = infotext.parse("")
    assert parsed.params == GenerationParams()
    assert parsed.warnings == [] and parsed.extras == {}


# -- hostile text ----------------------------------------------------------------------------
def _finishes(function, *args, limit: float = 120.0):
    """Whether function(*args) returns at all (in a thread, given a generous limit: a
    backtracking parser on these texts takes minutes to hours, a linear one milliseconds; the
    speed itself is measured by `python -m webui.bench --parsers-only`)."""
    import threading

    done = threading.Event()
    out = {}

    def work():
        out["value"] = function(*args)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    return done.wait(limit), out.get("value")


@pytest.mark.parametrize("name", list(adversarial_texts(10)))
def test_the_settings_scanner_returns_on_a_megabyte_of_hostile_text(name):
    text = adversarial_texts()[name]
    assert len(text) >= 1_000_000
    finished, pairs = _finishes(infotext._pairs, text)
    assert finished, name
    assert isinstance(pairs, dict)
    finished, parsed = _finishes(infotext.parse, text[:infotext.MAX_CHARS])
    assert finished and isinstance(parsed, infotext.Parsed)


def test_text_longer_than_the_cap_is_not_read():
    settings = "\nSteps: 31, Sampler: Euler, CFG scale: 8, Seed: 5"
    long = "a" * infotext.MAX_CHARS + settings
    parsed = infotext.parse(long)
    assert parsed.fields == set() and parsed.params == GenerationParams()
    assert "at most 100,000 are read" in parsed.warnings[0]
    # At the cap it is read.
    fits = "a" * (infotext.MAX_CHARS - len(settings)) + settings
    assert infotext.parse(fits).params.steps == 31


def test_scanner_keeps_quoted_commas_and_skips_text_without_keys():
    line = ('junk without key, more junk, Steps: 20, Model: "a, b: c", Size: 64x96, '
            'x"Odd key: 1, trailing')
    assert infotext._pairs(line) == {"Steps": "20", "Model": "a, b: c", "Size": "64x96",
                                     "Odd key": "1"}
    # An unclosed quote is plain text up to the next comma.
    assert infotext._pairs('Model: "open, Steps: 3') == {"Model": '"open', "Steps": "3"}


def test_fields_lists_the_texts_settings_as_written():
    text = infotext.format(make(prompt="a fox\nin snow", negative_prompt="blurry", steps=4),
                           seed=9, width=96, height=64)
    fields = infotext.fields(text)
    assert fields["Prompt"] == "a fox\nin snow" and fields["Negative prompt"] == "blurry"
    assert fields["Seed"] == "9" and fields["Steps"] == "4"
    assert (fields["Size"], fields["Size-1"], fields["Size-2"]) == ("96x64", "96", "64")
    assert infotext.fields("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}
    assert infotext.fields("x" * (infotext.MAX_CHARS + 1)) == {}


def test_control_characters_another_tool_left_in_a_prompt_are_dropped_not_the_prompt():
    text = ("a c\x00at\x1b\nNegative prompt: ug\x07ly\n"
            "Steps: 3, Sampler: Euler a, CFG scale: 7, Seed: 4, Size: 64x64")
    parsed = infotext.parse(text)
    assert (parsed.params.prompt, parsed.params.negative_prompt) == ("a cat", "ugly")
    assert parsed.params.steps == 3 and not parsed.warnings
