"""Loopback: N img2img passes, each pass's first picture the next pass's init image.

The loop behind Studio.loopback (handlers.py), kept apart so the handler stays thin. Each pass is
one ordinary engine job (saved like any result, with "Loopback: pass k/N" in its infotext), so the
queue, previews, interrupt and errors work as for Generate. As in other SD tools' loopback
script:

- the seed goes up by one per pass (pass 1 uses the page's seed, or the random one a -1 became),
  so passes do not repeat the same noise;
- each pass's denoising strength is the previous one's times the strength factor, kept within
  the strength's allowed range;
- colour correction (on by default here) matches every pass to the first pass's init image,
  not to the pass's own input, so the colours cannot drift pass by pass.

Loopback runs one picture per pass: batch count and batch size are set to 1 (the status says
so). The pages' pictures and settings are read once, by the same checks as Generate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterator

import gradio as gr

from .. import params as P

# Passes: from 2 (one pass is just Generate) to 32 (longer runs mostly repaint noise); default 4.
PASSES_RANGE = (2, 32)
DEFAULT_PASSES = 4
# Strength factor per pass: 1 keeps the strength, below 1 each pass changes less (settles the
# picture), above 1 each pass changes more; from 0.5 to 1.5, default 1.
FACTOR_RANGE = (0.5, 1.5)
DEFAULT_FACTOR = 1.0
# Colour correction of every pass, against colour drift over many passes: on by default.
DEFAULT_COLOR_CORRECTION = True
# The infotext key that says which pass a saved picture is.
INFOTEXT_KEY = "Loopback"
BATCH_NOTE = "Loopback runs one picture per pass: batch count and batch size were set to 1."


def check_passes(value: Any) -> int:
    """The number of passes, a whole number in PASSES_RANGE; ValueError names the field."""
    lo, hi = PASSES_RANGE
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value == int(value) and lo <= value <= hi)
    if not ok:
        raise ValueError(f"loopback_passes must be a whole number from {lo} to {hi} "
                         f"(got {value!r})")
    return int(value)


def check_factor(value: Any) -> float:
    """The strength factor per pass, a number in FACTOR_RANGE; ValueError names the field."""
    lo, hi = FACTOR_RANGE
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and lo <= value <= hi)
    if not ok:
        raise ValueError(f"loopback_strength_factor must be a number from {lo:g} to {hi:g} "
                         f"(got {value!r})")
    return float(value)


def check_color_correction(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"loopback_color_correction must be true or false (got {value!r})")
    return value


def next_strength(strength: float, factor: float) -> float:
    """The next pass's strength: strength x factor within the allowed range (rounded to six
    decimals, so the infotext shows 0.52, not 0.5200000000000001)."""
    lo, hi = P.field_range("strength")
    return round(min(max(strength * factor, lo), hi), 6)


def next_seed(seed: int) -> int:
    """The next pass's seed: one more, wrapping at the largest seed."""
    return (seed + 1) % (P.MAX_SEED + 1)


def run(studio, session, init_image, reference_image, basic: tuple, request, extras: dict,
        passes: Any, factor: Any, color_correction: Any) -> Iterator:
    """The loopback's GenerateView updates; `basic` and `extras` as for Studio.generate.

    Interrupt (Session.cancel) stops the running pass within a step and starts no further pass;
    the passes done so far stay shown (and saved), the interrupted pass's partial picture is
    shown but not saved."""
    from . import handlers as H  # handlers imports this module: look it up at run time

    for field, check, value in (("loopback_passes", check_passes, passes),
                                ("loopback_strength_factor", check_factor, factor),
                                ("loopback_color_correction", check_color_correction,
                                 color_correction)):
        try:
            value = check(value)
        except ValueError as exc:
            raise H._fail(field, str(exc)) from None
        if field == "loopback_passes":
            passes = value
        elif field == "loopback_strength_factor":
            factor = value
        else:
            color_correction = value
    notes: list[str] = []
    params, init, inputs = studio._request(init_image, reference_image, basic, extras, notes)
    if init is None:
        raise H._fail("init_image", "loopback needs an init image: each pass's picture is the "
                      "next pass's init image")
    if params.output_type != "image":
        raise H._fail("output_type", "loopback feeds each pass's picture to the next pass: set "
                      "the output type to image")
    if params.batch_count != 1 or params.batch_size != 1:
        notes.insert(0, BATCH_NOTE)
    params = params.replace(batch_count=1, batch_size=1, color_correction=color_correction)
    notes.append("Colour correction: on (every pass matched to the first init image)."
                 if color_correction else "Colour correction: off.")
    session.start()
    skip = gr.skip()
    owner = H._user(request)
    started = time.monotonic()
    passes_done: list[tuple[int, Any]] = []  # (pass number, ImageResult)
    strengths: list[float] = []
    notices: dict[str, None] = {}
    reference = None
    stop = ""  # why the loop ended early, for the summary
    for k in range(1, passes + 1):
        if session.interrupted:
            stop = f"**Interrupted** after pass {k - 1}/{passes}"
            break
        pass_inputs = dataclasses.replace(
            inputs, color_reference=reference, infotext_extra={INFOTEXT_KEY: f"pass {k}/{passes}"},
            # Latents only start pass 1; later passes start from the previous picture.
            latents=inputs.latents if k == 1 else None)
        job = studio._submit(session, params, init, save=True, inputs=pass_inputs, owner=owner)
        session.claimed = None  # the tracked job keeps the tab busy from here
        last = H.Progress("queued")
        try:
            yield H.GenerateView(f"Pass {k}/{passes} · {H.describe(last)}", skip, skip, skip,
                                 skip, skip)
            for last in studio._follow(job):
                preview = last.preview if last.preview is not None else skip
                yield H.GenerateView(f"Pass {k}/{passes} · {H.describe(last)}", preview, skip,
                                     skip, skip, skip)
            result = studio._result(job)
        finally:
            session.forget(job)
            if not job.done:
                job.cancel()  # the browser went away mid-pass: free the GPU for the others
        if result is None:
            stop = (f"**Interrupted** in pass {k}/{passes}, before its first image was ready")
            break
        item = result.images[0]
        passes_done.append((k, item))
        strengths.append(params.strength)
        if result.notice:
            notices[result.notice] = None  # once, however many passes gave it
        if k == 1:
            # The first init as the engine fitted it: the colour reference of every later pass
            # and the "before" of the comparison.
            reference = session.before = result.init
        session.results = [done for _, done in passes_done]
        session.selected = len(passes_done) - 1
        session.seed = passes_done[0][1].seed
        session.remember([item])
        if result.interrupted:
            where = f" at step {last.step}/{last.total}" if last.stage == "sampling" else ""
            stop = (f"**Interrupted** in pass {k}/{passes}{where}: its partly finished picture "
                    "is shown, not saved")
            break
        if k < passes:
            # Until the next pass's job is tracked, a second click in this tab is still refused.
            session.claimed = time.monotonic()
            yield H.GenerateView(f"Pass {k}/{passes} done · starting pass {k + 1}…", None,
                                 *_show(studio, session, passes_done, passes))
        init = item.image
        params = params.replace(seed=next_seed(item.seed),
                                strength=next_strength(params.strength, factor))
    if not passes_done:
        yield H.GenerateView("Interrupted before the first image was ready.", None, skip, skip,
                             skip, skip)
        return
    n = len(passes_done)
    first, last_item = passes_done[0][1], passes_done[-1][1]
    head = (f"seeds {first.seed}–{last_item.seed} · strength {strengths[0]:g} → "
            f"{strengths[-1]:g} (× {factor:g} per pass) · {init.width}×{init.height} · "
            f"{time.monotonic() - started:.1f} s")
    if stop:
        text = f"{stop} · {n} pass{'es' * (n != 1)} shown · {head}"
    else:
        text = f"**Done**: {n} loopback passes · {head}"
    lines = [text, *notices, *notes]
    yield H.GenerateView("\n\n".join(lines), None, *_show(studio, session, passes_done, passes))


def _show(studio, session, passes_done: list, passes: int) -> tuple:
    """(gallery, compare, infotext, path) with every pass so far, the newest selected."""
    from . import handlers as H

    gallery = [(H._with_infotext(item), f"pass {k}/{passes} · seed {item.seed}")
               for k, item in passes_done]
    return (gr.update(value=gallery, selected_index=len(gallery) - 1),
            *studio._selected(session))
