"""The Loopback accordion: passes, strength factor, colour correction and "Run loopback".

`build` places the controls where it is called (inside app.py's settings column) and registers
the Generate colour-correction checkbox in the adapters panel's extras, so it travels with
Generate, presets and "Send to img2img" like every other setting there; `wire` connects "Run
loopback" to Studio.loopback with the same inputs, outputs and GPU queue as Generate. Ranges and
defaults come from loopback.py and params.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import params as P
from . import loopback
from .adapters_panel import Panel as AdaptersPanel
from .handlers import Studio


@dataclass
class Panel:
    """The loopback controls: the settings Run loopback passes by keyword, and its button."""

    passes: gr.Slider
    strength_factor: gr.Slider
    color_correction: gr.Checkbox  # the loopback's own (on by default)
    run: gr.Button

    @property
    def kwargs(self) -> dict:
        """Studio.loopback's keyword inputs held by this panel."""
        return {"loopback_passes": self.passes,
                "loopback_strength_factor": self.strength_factor,
                "loopback_color_correction": self.color_correction}


def build(adapters: AdaptersPanel) -> Panel:
    """The accordion, placed where it is called; the Generate colour-correction checkbox goes
    into `adapters.extras["color_correction"]`."""
    lo, hi = loopback.PASSES_RANGE
    f_lo, f_hi = loopback.FACTOR_RANGE
    with gr.Accordion("Loopback", open=False, elem_id="loopback-accordion"):
        adapters.extras["color_correction"] = gr.Checkbox(
            value=P.default("color_correction"), label="Colour correction",
            info="Generate: " + P.GenerationParams.model_fields["color_correction"].description,
            elem_id="color-correction")
        gr.Markdown("Run loopback repeats img2img on its own result: each pass's picture is the "
                    "next pass's init image, with the seed one higher each pass. One picture "
                    "per pass (batch count and size are set to 1); every pass is shown and "
                    "saved. Interrupt stops the running pass and starts no further one.",
                    elem_id="loopback-help")
        with gr.Row(elem_id="loopback-row"):
            passes = gr.Slider(minimum=lo, maximum=hi, step=1, value=loopback.DEFAULT_PASSES,
                               label="Passes", info=f"How many passes run ({lo}–{hi}).",
                               elem_id="loopback-passes")
            factor = gr.Slider(minimum=f_lo, maximum=f_hi, step=0.01,
                               value=loopback.DEFAULT_FACTOR, label="Strength factor",
                               info="Each pass's denoising strength is the previous one's times "
                               "this: below 1 the picture settles, above 1 it keeps changing.",
                               elem_id="loopback-strength-factor")
        color = gr.Checkbox(value=loopback.DEFAULT_COLOR_CORRECTION,
                            label="Colour correction in every pass",
                            info="Match each pass's colours to the first init image, against "
                            "colour drift over many passes.",
                            elem_id="loopback-color-correction")
        run = gr.Button("Run loopback", variant="primary", elem_id="loopback-run")
    return Panel(passes, factor, color, run)


def wire(studio: Studio, panel: Panel, *, session: gr.State, generate: gr.Button,
         inputs: list, outputs: list, extras: dict, gpu_event: dict, instant: dict,
         toasting: dict) -> None:
    """Connect Run loopback as Generate is connected: claim the tab (marking the Generate button
    as running, so Esc interrupts), run the passes, free the button.

    inputs / outputs / gpu_event: those of Generate's job event ([session, init_image,
    reference, *controls]; [status, preview, gallery, compare, result_info, result_path]);
    extras: the EXTRAS components (adapters.extras), passed by keyword."""
    job = panel.run.click(studio.claim, [session], [generate], api_name="loopback_claim",
                          trigger_mode="multiple", **toasting
                          ).success(studio.loopback, inputs, outputs, api_name="loopback",
                                    show_progress="full", show_progress_on=[outputs[2]],
                                    inputs_kwargs={**extras, **panel.kwargs}, **gpu_event)
    # Freed on both paths: gradio does not run .then after a job that raised.
    job.then(studio.release, [session], [generate], api_name="loopback_release", **instant)
    job.failure(studio.release, [session], [generate], api_name="loopback_release_after_failure",
                **instant)
