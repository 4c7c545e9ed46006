"""GenerationParams: the guide's defaults, range checks with messages that name the field and its
range, scheduler names, size snapping and the effective step count."""

from __future__ import annotations

import math

import pytest

from webui import params as P
from webui import schedulers
from webui.params import GenerationParams, ParamsError, make

# field -> (min, max, whole number?) as the guide and the UI sliders define them.
NUMERIC = {
    "strength": (0.0, 1.0, False),
    "guidance_scale": (0.0, 30.0, False),
    "steps": (1, 150, True),
    "seed": (-1, P.MAX_SEED, True),
    "width": (64, 4096, True),
    "height": (64, 4096, True),
    "batch_count": (1, 100, True),
    "batch_size": (1, 8, True),
}


def _range_text(lo, hi) -> str:
    return f"from {lo:g} to {hi:g}" if isinstance(lo, float) else f"from {lo} to {hi}"


def _bad(field: str, value) -> ParamsError:
    with pytest.raises(ParamsError) as info:
        make(**{field: value})
    assert info.value.field == field, f"{field}={value!r} was blamed on {info.value.field!r}"
    assert field in str(info.value)
    return info.value


# -- defaults ---------------------------------------------------------------------------------
def test_defaults_follow_the_guide():
    p = GenerationParams()
    assert p.strength == 0.65
    assert p.guidance_scale == 7.0
    assert p.steps == 25
    assert p.scheduler == "Euler a"
    assert p.seed == -1
    assert (p.width, p.height) == (None, None)
    assert p.resize_mode == "just resize"
    assert (p.batch_count, p.batch_size) == (1, 1)
    assert p.dtype == "auto"
    assert make() == p
    assert P.default("strength") == 0.65 and P.default("steps") == 25


@pytest.mark.parametrize("field", NUMERIC)
def test_declared_ranges(field):
    lo, hi, _ = NUMERIC[field]
    assert P.field_range(field) == (lo, hi)


# -- numeric range checks ------------------------------------------------------------------------
@pytest.mark.parametrize("field", NUMERIC)
def test_bounds_are_accepted(field):
    lo, hi, _ = NUMERIC[field]
    assert getattr(make(**{field: lo}), field) == lo
    assert getattr(make(**{field: hi}), field) == hi


@pytest.mark.parametrize("field", NUMERIC)
def test_below_min_rejected_with_range(field):
    lo, hi, whole = NUMERIC[field]
    error = _bad(field, lo - (1 if whole else 0.01))
    assert _range_text(lo, hi) in str(error)


@pytest.mark.parametrize("field", NUMERIC)
def test_above_max_rejected_with_range(field):
    lo, hi, whole = NUMERIC[field]
    error = _bad(field, hi + (1 if whole else 0.01))
    assert _range_text(lo, hi) in str(error)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", NUMERIC)
def test_non_finite_rejected(field, value):
    lo, hi, _ = NUMERIC[field]
    error = _bad(field, value)
    assert _range_text(lo, hi) in str(error)


@pytest.mark.parametrize("value", ["abc", [1], {"a": 1}, object()],
                         ids=["text", "list", "dict", "object"])
@pytest.mark.parametrize("field", NUMERIC)
def test_wrong_type_rejected(field, value):
    lo, hi, _ = NUMERIC[field]
    error = _bad(field, value)
    assert _range_text(lo, hi) in str(error)


@pytest.mark.parametrize("field", [f for f, (_, _, whole) in NUMERIC.items() if whole])
def test_whole_number_fields_reject_fractions(field):
    lo, hi, _ = NUMERIC[field]
    error = _bad(field, lo + 80.5 if field in ("width", "height") else lo + 0.5)
    assert "whole number" in str(error)


def test_numbers_typed_as_text_are_accepted():
    # The CLI and infotext hand over strings.
    p = make(strength="0.5", steps="30", guidance_scale="7.5", seed="42", width="512")
    assert (p.strength, p.steps, p.guidance_scale, p.seed, p.width) == (0.5, 30, 7.5, 42, 512)


def test_first_bad_field_is_reported_and_message_is_one_line():
    error = _bad("steps", 0)
    assert "\n" not in str(error)
    assert "got 0" in str(error)


def test_assignment_and_replace_are_validated():
    p = make(strength=0.4)
    with pytest.raises(ParamsError) as info:
        p.replace(strength=1.5)
    assert info.value.field == "strength"
    assert p.replace(steps=40).steps == 40
    assert p.strength == 0.4  # replace returns a copy
    with pytest.raises(ValueError):
        p.strength = 2.0
    assert p.strength == 0.4


# -- other fields --------------------------------------------------------------------------------
def test_unknown_field_rejected():
    with pytest.raises(ParamsError) as info:
        make(denoise=0.5)
    assert info.value.field == "denoise"
    assert "unknown setting" in str(info.value)
    assert "strength" in str(info.value)  # lists the known ones


@pytest.mark.parametrize("field,choices", [("resize_mode", P.RESIZE_MODES), ("dtype", P.DTYPES)])
def test_choice_fields(field, choices):
    for choice in choices:
        assert getattr(make(**{field: choice}), field) == choice
    error = _bad(field, "bogus")
    for choice in choices:
        assert choice in str(error)


def test_prompt_must_be_text_and_bounded():
    assert "text" in str(_bad("prompt", 12))
    error = _bad("prompt", "x" * 20_001)
    assert "20000" in str(error)
    assert make(prompt="a\nmulti-line, prompt").prompt == "a\nmulti-line, prompt"


# -- schedulers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("given,expected", [
    ("Euler a", "Euler a"),
    ("EulerAncestralDiscreteScheduler", "Euler a"),
    ("DPMSolverMultistepScheduler", "DPM++ 2M"),
    ("DPMSolverSDEScheduler", "DPM++ SDE"),
    ("KDPM2AncestralDiscreteScheduler", "DPM2 a"),
    ("PNDMScheduler", "PLMS"),
    ("euler A", "Euler a"),
    ("  dpm++ 2m karras ", "DPM++ 2M Karras"),
    ("ddimscheduler", "DDIM"),
])
def test_scheduler_names_canonicalised(given, expected):
    assert make(scheduler=given).scheduler == expected


def test_every_accepted_scheduler_name_is_stable():
    for name in schedulers.all_names():
        canonical = make(scheduler=name).scheduler
        assert canonical in schedulers.SCHEDULERS, name
        assert make(scheduler=canonical).scheduler == canonical


def test_class_names_cover_14_classes_without_overrides():
    assert len(schedulers.CLASS_NAMES) == 14
    for cls, artist in schedulers.CLASS_NAMES.items():
        built_cls, extra = schedulers.SCHEDULERS[artist]
        assert built_cls == cls
        assert set(extra) <= {"skip_prk_steps"}, (cls, extra)


def test_every_sampler_with_a_karras_schedule_has_an_exponential_one():
    from diffusers import DDPMScheduler

    base = DDPMScheduler().config
    karras = [n for n in schedulers.SCHEDULERS if n.endswith(" Karras")]
    exponential = [n for n in schedulers.SCHEDULERS if n.endswith(" Exponential")]
    assert [n[: -len(" Karras")] for n in karras] == [n[: -len(" Exponential")]
                                                       for n in exponential]
    for name in schedulers.SCHEDULERS:
        built = schedulers.build(name, base, seed=1).config
        # The name alone decides the schedule, whatever the checkpoint's config says.
        assert bool(built.get("use_exponential_sigmas")) == name.endswith(" Exponential"), name
        assert bool(built.get("use_karras_sigmas")) == name.endswith(" Karras"), name
        # Infotext writes it as Sampler + Schedule type and reads it back.
        assert schedulers.join_schedule(*schedulers.split_schedule(name)) == name
    assert schedulers.split_schedule("DPM++ 2M Exponential") == ("DPM++ 2M", "Exponential")
    assert schedulers.join_schedule("Euler", "exponential") == "Euler Exponential"
    with pytest.raises(ValueError):
        schedulers.join_schedule("DDIM", "Exponential")  # DDIM has no such schedule


def test_unknown_scheduler_rejected_with_choices():
    error = _bad("scheduler", "Restart")
    assert "Euler a" in str(error) and "DPM++ 2M Karras" in str(error)
    assert "Restart" in str(error)


# -- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("given,snapped", [(64, 64), (71, 64), (100, 96), (519, 512), (4096, 4096),
                                           ("100", 96), (None, None)])
def test_sizes_snap_down_to_multiples_of_8(given, snapped):
    p = make(width=given, height=given)
    assert (p.width, p.height) == (snapped, snapped)


# -- effective steps -----------------------------------------------------------------------------
@pytest.mark.parametrize("steps,strength,expected", [
    (25, 0.65, 16), (4, 0.3, 1), (3, 0.3, 0), (150, 1.0, 150), (10, 0.0, 0), (20, 0.05, 1),
    (40, 0.5, 20), (1, 1.0, 1), (1, 0.99, 0),
])
def test_effective_steps(steps, strength, expected):
    p = make(steps=steps, strength=strength)
    assert p.effective_steps == expected
    # The same formula diffusers' img2img uses to pick its timesteps.
    assert p.effective_steps == min(int(steps * strength), steps)


def test_images_per_job_and_bands():
    assert make(batch_count=3, batch_size=4).images_per_job == 12
    assert P.band_of(0) == "original"
    assert P.band_of(0.2) == "subtle"
    assert P.band_of(0.65) == "medium"
    assert P.band_of(0.9) == "overhaul"


def test_nested_settings_name_their_path_and_their_own_fields():
    with pytest.raises(P.ParamsError) as info:
        P.make(controlnets=[{"model": "edges", "bogus": 1}])
    assert info.value.field == "controlnets[0].bogus"
    assert "known settings: model, source, preprocessor" in str(info.value)
    with pytest.raises(P.ParamsError) as info:
        P.make(loras=[{"name": "film", "weight": 9}])
    assert info.value.field == "loras[0].weight"
    assert "from -4 to 4" in str(info.value)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text, code", [("a\x00b", "0000"), ("red\x1b[31m", "001B"),
                                        ("bell\x07", "0007"), ("x\x7fy", "007F")])
def test_a_prompt_with_a_control_character_is_refused_naming_it(field, text, code):
    with pytest.raises(P.ParamsError) as info:
        P.make(**{field: text})
    assert info.value.field == field
    assert f"control character (U+{code})" in str(info.value)


def test_tabs_and_line_breaks_are_prompt_text_and_a_lone_surrogate_is_named():
    assert P.make(prompt="a\tcat\r\non a mat").prompt == "a\tcat\r\non a mat"
    with pytest.raises(P.ParamsError) as info:
        P.make(negative_prompt="bad \ud800 text")
    assert info.value.field == "negative_prompt"
    assert str(info.value) == ("negative_prompt is not valid Unicode text (a lone surrogate "
                               "character)")
