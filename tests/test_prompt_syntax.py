"""The prompt syntax: attention weights, escapes, BREAK and long prompts, parsed (prompts.py) and
encoded (engine/prompt_encoding.py) for the tiny SD 1.x and SDXL models, against the
pipelines' own text encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui import prompts
from webui.engine.adapter_inputs import AdapterError
from webui.engine.lora import parse_prompt_loras
from webui.engine.prompt_encoding import encode_prompts
from webui.params import make
from webui.prompts import BREAK, Fragment, parse
from webui.tiny import TINY_SD, TINY_SDXL, build_pipeline


def weights(text: str) -> list[tuple[str, float]]:
    return [("BREAK" if f.brk else f.text, round(f.weight, 6)) for f in parse(text)]


# -- parsing ---------------------------------------------------------------------------------------
def test_weights_nest_and_multiply():
    assert weights("a cat") == [("a cat", 1.0)]
    assert weights("a (cat)") == [("a ", 1.0), ("cat", 1.1)]
    assert weights("a ((cat))") == [("a ", 1.0), ("cat", 1.21)]
    assert weights("a [cat]") == [("a ", 1.0), ("cat", round(1 / 1.1, 6))]
    assert weights("(a cat:1.3), dog") == [("a cat", 1.3), (", dog", 1.0)]
    assert weights("((a:1.5))") == [("a", 1.65)]
    assert weights("(a ( b : 0.5 ))") == [("a ", 1.1), (" b ", 0.55)]
    assert weights("(a:-0.5)") == [("a", -0.5)]


def test_weight_one_is_exactly_plain():
    assert parse("(a cat:1)") == [Fragment("a cat", 1.0)]
    assert parse("a (cat:1.0) sat") == [Fragment("a cat sat", 1.0)]


def test_escapes_unbalanced_brackets_and_colons_are_text():
    assert weights(r"a \(cat\) \[x\] \\") == [("a (cat) [x] \\", 1.0)]
    assert weights("stray) x]") == [("stray) x]", 1.0)]
    assert weights("x (unclosed") == [("x ", 1.0), ("unclosed", 1.1)]
    assert weights("time: 5pm, ratio 16:9") == [("time: 5pm, ratio 16:9", 1.0)]
    assert weights("") == [("", 1.0)]


def test_break_starts_a_chunk_only_as_a_capital_word():
    assert weights("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", 1.0), ("a dog", 1.0)]
    assert weights("(a cat BREAK dog)") == [("a cat", 1.1), ("BREAK", 1.0), ("dog", 1.1)]
    assert weights("BREAKfast, break") == [("BREAKfast, break", 1.0)]
    assert parse("BREAK")[0] is BREAK


def test_explicit_weights_have_a_range():
    with pytest.raises(prompts.PromptSyntaxError, match="from -10 to 10"):
        parse("(a cat:11)")


def test_lora_tag_weights_obey_the_picker_range():
    assert parse_prompt_loras("a cat <lora:film:-4>")[1] == [("film", -4.0)]
    with pytest.raises(AdapterError, match="from -4 to 4, as in the LoRA picker") as info:
        parse_prompt_loras("a cat <lora:film:9>")
    assert info.value.field == "prompt"


def test_parsing_is_linear_on_a_megabyte_of_hostile_text():
    """Deep brackets, unclosed groups, escapes, many BREAKs: each returns (the speed is
    measured by `python -m webui.bench --parsers-only`)."""
    from webui.bench import adversarial_texts

    from test_infotext import _finishes

    for name, text in {**adversarial_texts(),
                       "nested groups": "(a" * 300_000 + ")" * 300_000,
                       "unclosed groups": "(a[b" * 250_000}.items():
        finished, fragments = _finishes(parse, text)
        assert finished and fragments, name
        finished, _ = _finishes(parse_prompt_loras, text)
        assert finished, name


# -- encoding --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[TINY_SD, TINY_SDXL])
def pipe(request):
    return build_pipeline(request.param)


def _own(pipe, prompt: str, negative: str | None = None) -> dict:
    """The pipeline's own embeddings of a prompt given as text."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=negative)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    embeds, negative_embeds = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}


def _ours(pipe, prompt: str, negative: str = "") -> dict:
    return encode_prompts(pipe, prompt, negative, 1)


def test_an_unweighted_prompt_gives_the_pipelines_own_embeddings(pipe):
    ours = _ours(pipe, "a red fox, snow", "blurry")
    own = _own(pipe, "a red fox, snow", "blurry")
    for key, value in ours.items():
        assert torch.equal(value, own[key]), key
    if "pooled_prompt_embeds" in ours:
        assert ours["pooled_prompt_embeds"].shape == own["pooled_prompt_embeds"].shape


def test_weight_one_equals_plain_and_weights_change_the_embeddings(pipe):
    plain = _ours(pipe, "a red fox")["prompt_embeds"]
    assert torch.equal(_ours(pipe, "(a red fox:1)")["prompt_embeds"], plain)
    assert torch.equal(_ours(pipe, "a (red:1.0) fox")["prompt_embeds"], plain)
    strong = _ours(pipe, "a (red:1.5) fox")["prompt_embeds"]
    weak = _ours(pipe, "a [red] fox")["prompt_embeds"]
    assert not torch.equal(strong, plain) and not torch.equal(weak, plain)
    assert torch.isfinite(strong).all() and torch.isfinite(weak).all()
    # Weights rescale the tokens and keep the chunk's mean, where there is one to keep (the
    # tiny SD 1.x encoder's final norm leaves a mean of about zero).
    mean = plain.mean()
    if mean.abs() > 1e-3 * plain.abs().mean():
        assert torch.allclose(strong.mean(), mean, rtol=1e-4)
    negative = _ours(pipe, "a fox", "(blurry:1.4)")["negative_prompt_embeds"]
    assert not torch.equal(negative, _ours(pipe, "a fox", "blurry")["negative_prompt_embeds"])


def test_escaped_brackets_are_literal_text(pipe):
    assert torch.equal(_ours(pipe, r"a \(red\) fox")["prompt_embeds"],
                       _own(pipe, "a (red) fox")["prompt_embeds"])


def test_long_prompts_are_chunked_and_their_tail_counts(pipe):
    words = ", ".join(["a quiet harbour at dawn"] * 20)  # well over 75 tokens
    cat, dog = _ours(pipe, words + ", a cat"), _ours(pipe, words + ", a dog")
    width = pipe.tokenizer.model_max_length
    chunks = cat["prompt_embeds"].shape[1] // width
    assert cat["prompt_embeds"].shape[1] == chunks * width and chunks >= 2
    assert not torch.equal(cat["prompt_embeds"], dog["prompt_embeds"])
    # The pipeline itself cuts at 77 tokens, so there the tail is lost.
    assert torch.equal(_own(pipe, words + ", a cat")["prompt_embeds"],
                       _own(pipe, words + ", a dog")["prompt_embeds"])
    # The negative prompt gets as many chunks as the prompt.
    both = _ours(pipe, words + ", a cat", "blurry")
    assert both["negative_prompt_embeds"].shape == both["prompt_embeds"].shape


def test_break_changes_the_embeddings_and_makes_a_chunk(pipe):
    width = pipe.tokenizer.model_max_length
    broken = _ours(pipe, "a cat BREAK a dog")["prompt_embeds"]
    assert broken.shape[1] == 2 * width
    assert not torch.equal(broken[:, :width], _ours(pipe, "a cat a dog")["prompt_embeds"])
    assert torch.equal(broken[:, :width], _ours(pipe, "a cat")["prompt_embeds"])


def test_sdxl_pooled_embeddings_come_from_the_first_chunk():
    pipe = build_pipeline(TINY_SDXL)
    ours = _ours(pipe, "a red fox BREAK in the snow", "blurry")
    assert ours["pooled_prompt_embeds"].shape == (1, pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(ours["pooled_prompt_embeds"], _ours(pipe, "a red fox")
                       ["pooled_prompt_embeds"])
    assert "negative_pooled_prompt_embeds" in ours
    # A long prompt with an empty negative: zeros as long as the prompt (the model's config).
    long = _ours(pipe, "a red fox BREAK in the snow")
    assert torch.count_nonzero(long["negative_prompt_embeds"]) == 0
    assert long["negative_prompt_embeds"].shape == long["prompt_embeds"].shape


# -- through the engine ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", [TINY_SD, TINY_SDXL])
def test_the_syntax_changes_the_picture_and_weight_one_does_not(engine, model):
    rng = np.random.RandomState(3)
    init = Image.fromarray(rng.randint(0, 256, (64, 96, 3), dtype=np.uint8))

    def picture(prompt, negative=""):
        params = make(prompt=prompt, negative_prompt=negative, steps=4, strength=0.8, seed=9,
                      pag_scale=0.0, model=model)
        return np.asarray(engine.generate(params, init, save=False).images[0].image)

    plain = picture("a red fox")
    assert np.array_equal(picture("(a red fox:1)"), plain)
    assert not np.array_equal(picture("a (red:1.6) fox"), plain)
    assert not np.array_equal(picture("a red BREAK fox"), plain)
    words = ", ".join(["a quiet harbour at dawn"] * 20)
    assert not np.array_equal(picture(words + ", a cat"), picture(words + ", a dog"))
    assert not np.array_equal(picture("a fox", "(blurry:1.5)"), picture("a fox", "blurry"))
    engine.unload()


def test_a_weight_out_of_range_names_the_prompt(engine):
    from webui.errors import InputError

    init = Image.new("RGB", (64, 64), (90, 120, 200))
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(InputError, match="from -10 to 10") as info:
            engine.generate(make(steps=2, strength=0.5, **{field: "a (cat:25)"}), init)
        assert info.value.field == field
