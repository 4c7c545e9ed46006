"""Property-based tests (hypothesis): whatever a client, a picture's text chunk or a preset file
holds, the parsers and validators answer with settings or with a clean error naming the field,
never with another exception.

Bounded: a fixed number of examples each, derandomized (the same draws on every run), no
example database; nothing here loads a model.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from webui import infotext, presets, prompts
from webui import params as P
from webui.api import schema
from webui.api.convert import img2img_request
from webui.engine import InputError, JobRequest, ModelError

BOUNDED = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))
FIELDS = sorted(P.GenerationParams.model_fields)

# JSON values of every type, with the edges a hostile client sends: NaN, infinities, huge and
# negative numbers, control characters and lone surrogates in text.
SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=40) | st.sampled_from(["", " ", "\x00", "\ud800", "-1", "1e309",
                                                   "NaN", "Euler a", "../../etc/passwd"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
# Settings for some fields: mostly the right type, often out of range, sometimes anything.
SETTING = st.one_of(st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=True), JSON)


def _is_clean(message: str) -> bool:
    """An artist's message, not an exception's text."""
    return bool(message) and not any(word in message for word in
                                     ("Traceback", "TypeError", "AttributeError", "KeyError"))


@BOUNDED
@given(values=st.dictionaries(st.sampled_from(FIELDS + ["not_a_field"]), SETTING, max_size=6))
def test_settings_are_valid_or_refused_naming_the_field(values):
    try:
        made = P.make(**values)
    except P.ParamsError as exc:
        event("refused")
        root = exc.field.split(".")[0].split("[")[0]
        assert root in values, (exc.field, values)
        assert _is_clean(str(exc))
        return
    # Accepted settings are the ones asked for, within their ranges.
    assert isinstance(made, P.GenerationParams)
    for name in ("strength", "guidance_scale"):
        assert math.isfinite(getattr(made, name))
    assert 1 <= made.steps and -1 <= made.seed <= P.MAX_SEED


@BOUNDED
@given(values=st.fixed_dictionaries({}, optional={
    # Prompts as artists write them: words, weights, commas, several lines.
    "prompt": st.text(alphabet=st.sampled_from("abc xyz,.:()[]1\n-"), max_size=60),
    "negative_prompt": st.text(alphabet=st.sampled_from("abc xyz,.:()\n"), max_size=30),
    "strength": st.floats(0, 1), "guidance_scale": st.floats(0, 30),
    "steps": st.integers(1, 150), "seed": st.integers(-1, P.MAX_SEED),
    "scheduler": st.sampled_from(P.choices("scheduler") or ("Euler a",)),
    "width": st.integers(64, 4096), "height": st.integers(64, 4096),
    "batch_size": st.integers(1, 8), "clip_skip": st.integers(1, 12)}))
def test_any_valid_settings_survive_the_infotext_round_trip(values):
    try:
        params = P.make(**values)
    except P.ParamsError:
        return  # a combination the settings refuse (the test above covers refusals)
    text = infotext.format(params, seed=max(params.seed, 0), width=params.width or 512,
                           height=params.height or 512)
    parsed = infotext.parse(text).params
    for name in values:
        if name in ("seed", "width", "height"):
            continue  # the infotext holds the seed and size actually used
        want, got = getattr(params, name), getattr(parsed, name)
        if name in ("prompt", "negative_prompt"):
            # The infotext keeps a prompt's lines; the blank space around it is not kept.
            want, got = want.strip(), got.strip()
        if isinstance(want, float):
            assert got == pytest.approx(want, abs=1e-3), name
        else:
            assert got == want, (name, want, got)


@BOUNDED
@given(text=st.text(max_size=400) | st.builds(
    lambda prompt, pairs: prompt + "\n" + ", ".join(f"{k}: {v}" for k, v in pairs),
    st.text(max_size=40),
    st.lists(st.tuples(st.sampled_from(["Steps", "Sampler", "CFG scale", "Seed", "Size",
                                        "Denoising strength", "Clip skip", "Lora hashes",
                                        "Model", "Negative prompt", "x"]),
                       st.text(max_size=12) | st.integers().map(str)), max_size=8)))
def test_any_infotext_gives_settings_and_warnings_never_an_exception(text):
    parsed = infotext.parse(text)
    assert isinstance(parsed.params, P.GenerationParams)
    assert all(isinstance(w, str) and _is_clean(w) for w in parsed.warnings)
    assert isinstance(infotext.fields(text), dict)


@BOUNDED
@given(prompt=st.text(alphabet=st.sampled_from("ab ()[]:\\.,01-eBREAK<>lora\x00"), max_size=80)
       | st.text(max_size=80))
def test_any_prompt_parses_to_weighted_fragments_or_a_clean_error(prompt):
    try:
        fragments = prompts.parse(prompt)
    except prompts.PromptSyntaxError as exc:
        event("refused")
        assert _is_clean(str(exc))
        return
    assert fragments
    assert all(math.isfinite(f.weight) for f in fragments)
    # Nothing is invented: every fragment's text comes from the prompt's characters.
    assert set("".join(f.text for f in fragments)) <= set(prompt)


@BOUNDED
@given(raw=JSON | st.fixed_dictionaries(
    {"name": st.text(max_size=20) | JSON},
    optional={"settings": st.dictionaries(st.sampled_from(FIELDS + ["x"]), SETTING, max_size=4)
              | JSON, "prompt_template": st.text(max_size=20) | JSON,
              "description": JSON, "version": JSON}))
def test_any_preset_json_is_a_preset_or_a_preset_error(raw):
    import json

    for data in (json.dumps(raw, allow_nan=True).encode(), json.dumps(raw)[:-1]):
        try:
            preset = presets.parse(data, "fuzz.json")
        except presets.PresetError as exc:
            event("refused")
            assert _is_clean(str(exc)) and "fuzz.json" in str(exc)
            continue
        assert presets.check_name(preset.name) == preset.name
        presets.validate_settings(preset.settings, "fuzz.json")


@pytest.fixture(scope="module")
def api_parts(tmp_path_factory):
    from webui.engine import Engine

    root = tmp_path_factory.mktemp("fuzz")
    engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                    model="tiny-random")
    return engine, presets.PresetStore(root / "presets")


def _png() -> str:
    import base64
    import io

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(data, "PNG")
    return base64.b64encode(data.getvalue()).decode()


API_FIELDS = sorted(set(schema.Img2ImgBody.model_fields) - {"init_images"})


@BOUNDED
@given(body=st.dictionaries(st.sampled_from(API_FIELDS), SETTING, max_size=6),
       init=st.sampled_from(["png", "junk", "data-url", "none"]))
def test_any_api_request_is_a_job_or_an_error_naming_its_field(api_parts, body, init):
    engine, store = api_parts
    picture = _png()
    body["init_images"] = {"png": [picture], "junk": ["bm90IGEgcGljdHVyZQ=="],
                           "data-url": [f"data:image/png;base64,{picture}"], "none": []}[init]
    try:
        parsed = schema.Img2ImgBody.model_validate(body)
    except ValidationError:
        event("refused by the request model")
        return  # FastAPI answers it with a 422 naming the field (test_api covers the shape)
    try:
        request = img2img_request(engine, parsed, engine.model, store, None)
        engine.check_request(request)
    except (InputError, P.ParamsError) as exc:
        event(f"refused: {exc.field}")
        # The API answers both with a 422 naming the field.
        assert isinstance(exc.field, str) and exc.field
        assert _is_clean(str(exc))
        return
    except ModelError as exc:  # a checkpoint the studio does not have (a 422 too)
        assert _is_clean(str(exc))
        return
    event("a job")
    assert isinstance(request, JobRequest)
    assert init in ("png", "data-url")
