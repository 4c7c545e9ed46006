"""The studio page: one gr.Blocks, its layout and the wiring of every event to handlers.Studio.

Ranges, defaults and help texts come from params.py; nothing here repeats a number that lives
there. GPU events skip Gradio's input preprocessing so that every value, from the page or from an
API client, is validated by GenerationParams and fails with a message naming the field.
"""

from __future__ import annotations

import gradio as gr

from .. import params as P
from .. import schedulers
from . import (adapters_panel, cluster_panel, handlers, loopback_panel, model_download,
               presets_panel, xy)
from .handlers import Session, Studio

# Below 1 the library turns classifier-free guidance off entirely, so the slider starts where the
# setting does something; API clients may still send anything params.py accepts.
CFG_SLIDER_FLOOR = 1.0

CSS = """
#seed-row button, #model-row button { max-width: 3.2em; min-width: 2.6em; }
#lora-row > button, #controlnet-help-row > button { max-width: 3.2em; min-width: 2.6em; }
#status, #xy-status { min-height: 2.2em; }
#title h3 { margin: 0; }
#img2img-row { display: grid !important; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr);
  grid-template-areas: "init out" "settings out"; align-items: start; }
#init-side { grid-area: init; }
#settings-side { grid-area: settings; }
/* The result stays in view while the artist scrolls through the settings. */
#output-side { grid-area: out; grid-row: 1 / span 2; position: sticky; top: var(--size-2); }
@media (max-width: 760px) {
  #img2img-row { grid-template-columns: minmax(0, 1fr);
    grid-template-areas: "init" "out" "settings"; }
  #output-side { grid-row: auto; position: static; }
}
#tiny-notice, #tiny-notice * { font-size: var(--text-sm); line-height: 1.3; }
#run-area button { width: 100%; }
#generate.running { filter: saturate(0.6); }
/* One output area: the live preview lies over the result gallery while a job samples and is
   gone once cleared, so no stale preview stays beside a finished result. */
#output-area { position: relative; }
#preview { position: absolute; inset: 0; z-index: 20; background: var(--block-background-fill); }
#preview:not(:has(img)) { display: none; }
#preview img { object-fit: contain; }
/* Toasts at the bottom right, away from the model picker at the top. */
.toast-wrap { top: auto !important; bottom: var(--size-4); }
/* The preset buttons keep to one line at laptop widths and wrap as whole buttons on a phone. */
#preset-actions { flex-wrap: wrap; gap: var(--size-1); }
#preset-actions > button { flex: 1 0 auto; min-width: 5.5em; }
/* The mask editor's own clear empties the picture too; "Clear mask" below keeps it. */
#mask-editor button[aria-label="Clear canvas"], #mask-editor button[title="Clear canvas"] {
  display: none; }
"""


# Ctrl+Enter (⌘+Enter on a Mac) in a prompt box generates; Esc interrupts. Gradio has no
# key bindings for a whole page, so a small script clicks the page's own buttons: the same path
# a mouse takes, with the same queue and the same refusals.
KEYS_JS = """
() => {
  document.addEventListener("keydown", (event) => {
    const inPrompt = event.target.closest && event.target.closest("#prompt, #negative-prompt");
    if (inPrompt && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      document.querySelector("#generate")?.click();
    } else if (event.key === "Escape") {
      // Only while a job runs: an idle Esc must not replace the last result's summary.
      const xy = document.querySelector("#tab-xy");
      if (xy && xy.offsetParent !== null) {
        document.querySelector("#xy-interrupt")?.click();
      } else if (document.querySelector("#generate.running")) {
        document.querySelector("#interrupt")?.click();
      }
    }
  });
}
"""


def _info(name: str) -> str:
    return P.GenerationParams.model_fields[name].description or ""


def _slider(name: str, label: str, step: float, elem_id: str, minimum: float | None = None,
            **kwargs) -> gr.Slider:
    lo, hi = P.field_range(name)
    return gr.Slider(minimum=lo if minimum is None else max(lo, minimum), maximum=hi,
                     value=P.default(name), step=step, label=label, info=_info(name),
                     elem_id=elem_id, **kwargs)


# Gradio's copies of uploads and of results shown on the page: every hour, those older than a
# day are deleted (and all of them when the studio restarts), so the cache cannot grow without
# end. The outputs folder is not touched.
CACHE_CLEANING = (3600, 24 * 3600)


def build(studio: Studio, gpu_concurrency: int | None = None, initial=None,
          presets=None) -> gr.Blocks:
    """The studio page for `studio`'s engine.

    initial: a presets_panel.Startup (`--preset`) the page starts with; presets: the
    PresetStore (default: the shipped presets and ./user-presets).

    gpu_concurrency: how many GPU events Gradio hands to the engine at once. The engine runs one
    job at a time (a cluster one per replica) and reports queue positions itself, so this is its
    queue plus the running jobs, plus one that the engine answers "busy" (launch.queue_studio).
    """
    engine = studio.engine
    # A cluster runs one job per replica at once, the in-process engine one; one handler more
    # than the engine holds answers a click beyond its queue with the studio's "busy".
    gpu = gpu_concurrency or engine.queue_size + getattr(engine, "replicas", 1) + 1
    seed_lo, seed_hi = P.field_range("seed")
    _, size_hi = P.field_range("width")

    with gr.Blocks(title="img2img studio", analytics_enabled=False,
                   delete_cache=CACHE_CLEANING) as demo:
        session = gr.State(Session, delete_callback=lambda s: s.cancel())
        # The workspace rule: on a 1280×720 screen the prompt, Generate, the init image and the
        # latest result are all in view after a generation. So the header is one row, the prompt
        # and Generate span the top, and below it the init image and settings sit beside one
        # output area. On a phone the columns stack in that same order: Generate comes right
        # after the prompt, before the init image.
        with gr.Row(elem_id="top-row"):
            with gr.Column(scale=1, min_width=180, elem_id="title-area"):
                gr.Markdown("### img2img studio", elem_id="title")
            with gr.Column(scale=5, min_width=300, elem_id="model-area"):
                with gr.Row(elem_id="model-row"):
                    # Checkpoints in the models folder and the built-in test models; 🔄
                    # rescans the folder (no help line: the header stays one line high).
                    model = gr.Dropdown(studio.models(), value=engine.model, label="Model",
                                        container=False, scale=5, elem_id="model")
                    refresh = gr.Button("🔄", scale=0, elem_id="refresh-models")
                tiny = gr.Markdown(f"**Note:** {handlers.tiny_notice(engine)}",
                                   visible=engine.is_tiny(), elem_id="tiny-notice")
            # A first real model: the download panel, closed beside the picker.
            with gr.Column(scale=2, min_width=240, elem_id="get-model-area"):
                get_model = model_download.build(studio)

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("img2img", id="img2img", elem_id="tab-img2img"):
                with gr.Row(elem_id="prompt-row"):
                    with gr.Column(scale=6, min_width=280, elem_id="prompt-area"):
                        prompt = gr.Textbox(label="Prompt", lines=2, max_lines=8,
                                            placeholder=_info("prompt")
                                            + " Ctrl+Enter generates, Esc interrupts.",
                                            elem_id="prompt")
                        negative = gr.Textbox(label="Negative prompt", show_label=False,
                                              lines=1, max_lines=6,
                                              placeholder="Negative prompt: "
                                              + _info("negative_prompt").split(";")[0].lower(),
                                              elem_id="negative-prompt")
                    with gr.Column(scale=1, min_width=180, elem_id="run-area"):
                        run = gr.Button("Generate", variant="primary", size="lg",
                                        elem_id="generate")
                        stop = gr.Button("Interrupt", variant="stop", elem_id="interrupt")
                        add_negative = gr.Button("+ standard negative", size="sm",
                                                 elem_id="add-standard-negative")
                with gr.Row(elem_id="img2img-row"):
                    # Three columns in a CSS grid (see CSS): on a laptop the init image with
                    # the settings below it on the left and the output area on the right; on a
                    # phone init image, result, settings, one under the other.
                    with gr.Column(scale=1, min_width=300, elem_id="init-side"):
                        adapters = adapters_panel.Panel()
                        adapters_panel.mode_selector(adapters)
                        # One settings panel for both: the sub-tab picks what Generate does.
                        with gr.Tabs(elem_id="mode-tabs"):
                            with gr.Tab("img2img", id="mode-img2img",
                                        elem_id="mode-tab-img2img") as img2img_tab:
                                init_image = gr.Image(
                                    label="Init image", type="pil", format="png",
                                    sources=["upload", "clipboard"], height=260,
                                    elem_id="init-image")
                            with gr.Tab("Inpaint", id="mode-inpaint",
                                        elem_id="mode-tab-inpaint") as inpaint_tab:
                                adapters_panel.inpaint_controls(adapters)
                    with gr.Column(scale=1, min_width=300, elem_id="output-side"):
                        status = gr.Markdown("Ready.", label="Status", elem_id="status")
                        # One output area: the live preview lies over the result gallery while
                        # a job samples (CSS), and is cleared when the result replaces it.
                        with gr.Group(elem_id="output-area"):
                            preview = gr.Image(label="Live preview", interactive=False,
                                               format="jpeg", show_label=False,
                                               elem_id="preview")
                            gallery = gr.Gallery(label="Result", format="png", columns=4,
                                                 height=300, preview=True, selected_index=0,
                                                 object_fit="contain",
                                                 interactive=False, elem_id="gallery")
                        with gr.Row(elem_id="result-actions"):
                            to_init = gr.Button("Send to init image", size="sm",
                                                elem_id="send-to-init")
                            reuse = gr.Button("Reuse seed", size="sm", elem_id="reuse-seed")
                        latent_file = gr.File(label="Latents (.safetensors)", file_count="multiple",
                                              interactive=False, visible=False,
                                              elem_id="latent-file")
                        result_info = gr.Textbox(label="Infotext", lines=3, interactive=False,
                                                 buttons=["copy"], elem_id="result-infotext")
                        result_path = gr.Textbox(label="File", interactive=False,
                                                 elem_id="result-path")
                        compare = gr.ImageSlider(label="Before / after", format="png",
                                                 interactive=False, max_height=360,
                                                 elem_id="compare")
                    with gr.Column(scale=1, min_width=300, elem_id="settings-side"):
                        strength = _slider("strength", "Denoising strength", 0.01, "strength")
                        band = gr.Markdown(handlers.strength_band(P.default("strength")),
                                           elem_id="strength-band")
                        cfg = _slider("guidance_scale", "CFG scale", 0.5, "cfg",
                                      minimum=CFG_SLIDER_FLOOR)
                        # The loaded preset's band hint, where the artist moves the sliders.
                        preset_hint = gr.Markdown(padding=True, elem_id="preset-hint")
                        steps = _slider("steps", "Sampling steps", 1, "steps")
                        effective = gr.Markdown(
                            handlers.effective_steps(P.default("steps"), P.default("strength")),
                            elem_id="effective-steps")
                        with gr.Row(elem_id="seed-row"):
                            seed = gr.Number(value=P.default("seed"), label="Seed",
                                             info=_info("seed"), precision=0, minimum=seed_lo,
                                             maximum=seed_hi, scale=5, elem_id="seed")
                            dice = gr.Button("🎲", scale=0, elem_id="random-seed")
                            recycle = gr.Button("♻", scale=0, elem_id="last-seed")
                        scheduler = gr.Dropdown(schedulers.all_names(),
                                                value=P.default("scheduler"), label="Sampler",
                                                info=_info("scheduler"), elem_id="scheduler")
                        with gr.Row(elem_id="size-row"):
                            width = gr.Number(value=0, label="Width", precision=0, minimum=0,
                                              maximum=size_hi, step=8,
                                              info="0 keeps the init image's width.",
                                              elem_id="width")
                            height = gr.Number(value=0, label="Height", precision=0, minimum=0,
                                               maximum=size_hi, step=8,
                                               info="0 keeps the init image's height.",
                                               elem_id="height")
                        resize_mode = gr.Dropdown(list(P.RESIZE_MODES),
                                                  value=P.default("resize_mode"),
                                                  label="Resize mode", info=_info("resize_mode"),
                                                  elem_id="resize-mode")
                        with gr.Row(elem_id="batch-row"):
                            batch_count = _slider("batch_count", "Batch count", 1, "batch-count")
                            batch_size = _slider("batch_size", "Batch size", 1, "batch-size")
                        adapters_panel.adapters_accordion(studio, adapters)
                        adapters_panel.controlnet_accordion(studio, adapters)
                        adapters_panel.memory_accordion(adapters)
                        adapters_panel.advanced_accordion(adapters)
                        loopback = loopback_panel.build(adapters)
                        # A panel, not a Group: a Group strips the buttons of their look.
                        with gr.Column(variant="panel", elem_id="presets-area"):
                            panel = presets_panel.build(presets, initial, hint=preset_hint)


            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo"):
                with gr.Row(elem_id="pnginfo-row"):
                    png_image = gr.Image(label="Drop a PNG", type="filepath", image_mode=None,
                                         sources=["upload", "clipboard"], format="png",
                                         elem_id="pnginfo-image")
                    with gr.Column(elem_id="pnginfo-side"):
                        png_text = gr.Textbox(label="Parameters", lines=6, interactive=False,
                                              buttons=["copy"], elem_id="pnginfo-text")
                        png_summary = gr.Markdown(label="Summary", elem_id="pnginfo-summary")
                        send = gr.Button("Send to img2img", variant="primary",
                                         elem_id="pnginfo-send")
                        send_note = gr.Markdown(label="Filled", elem_id="pnginfo-send-note")

            with gr.Tab("History", id="history", elem_id="tab-history") as history_tab:
                gr.Markdown(f"This browser tab's results, newest first (the last "
                            f"{handlers.HISTORY_LIMIT}). Click one to see its settings.",
                            elem_id="history-help")
                with gr.Row(elem_id="history-row"):
                    history_gallery = gr.Gallery(label="History", columns=6, height=420,
                                                 allow_preview=False, object_fit="contain",
                                                 interactive=False, elem_id="history-gallery")
                    with gr.Column(elem_id="history-side"):
                        history_info = gr.Textbox(label="Settings", lines=6, interactive=False,
                                                  buttons=["copy"], elem_id="history-infotext")
                        with gr.Row(elem_id="history-actions"):
                            history_restore = gr.Button("Restore these settings",
                                                        variant="primary",
                                                        elem_id="history-restore")
                            history_init = gr.Button("Send to init image",
                                                     elem_id="history-send-to-init")
                        history_note = gr.Markdown(elem_id="history-note")

            with gr.Tab("X/Y plot", id="xy", elem_id="tab-xy") as xy_tab:
                gr.Markdown("The init image and settings of the img2img tab, over a grid of two "
                            "settings with the same seed in every cell; a Z axis makes one grid "
                            f"per value (at most {xy.MAX_CELLS} cells in all). Values are "
                            "separated by commas (quote one that holds a comma). Prompt S/R "
                            "searches the prompt for its first value and puts each value in its "
                            "place; LoRA weight sets the first picked LoRA's weight, ControlNet "
                            "weight the first enabled unit's scale.", elem_id="xy-help")
                with gr.Row(elem_id="xy-base-row"):
                    # What the plot starts from, so nobody plots the wrong picture or prompt.
                    xy_init = gr.Image(label="Init image (img2img tab)", interactive=False,
                                       height=180, format="png", scale=1, elem_id="xy-init")
                    xy_base = gr.Markdown("The img2img tab's settings show here.", scale=3,
                                          elem_id="xy-base")
                axes = list(xy.AXES)
                with gr.Row(elem_id="xy-x-row"):
                    x_axis = gr.Dropdown(axes, value=axes[0], label="X axis", scale=1,
                                         elem_id="xy-x-axis")
                    x_values = gr.Textbox(xy.default_values(axes[0]), label="X values",
                                          scale=3, elem_id="xy-x-values")
                with gr.Row(elem_id="xy-y-row"):
                    y_axis = gr.Dropdown(axes, value=axes[1], label="Y axis", scale=1,
                                         elem_id="xy-y-axis")
                    y_values = gr.Textbox(xy.default_values(axes[1]), label="Y values",
                                          scale=3, elem_id="xy-y-values")
                with gr.Row(elem_id="xy-z-row"):
                    z_axis = gr.Dropdown(xy.Z_AXES, value=xy.NOTHING, label="Z axis", scale=1,
                                         info="One grid per value.", elem_id="xy-z-axis")
                    z_values = gr.Textbox("", label="Z values", scale=3, elem_id="xy-z-values")
                with gr.Row(elem_id="xy-run-row"):
                    xy_run = gr.Button("Run X/Y plot", variant="primary", elem_id="xy-run")
                    xy_stop = gr.Button("Interrupt", variant="stop", elem_id="xy-interrupt")
                xy_status = gr.Markdown(label="Status", elem_id="xy-status")
                xy_preview = gr.Image(label="Live preview", interactive=False, height=160,
                                      format="jpeg", elem_id="xy-preview")
                # With a Z axis its grids are shown one under the other (each is saved alone).
                xy_grid = gr.Image(label="X/Y plot", interactive=False, format="png",
                                   elem_id="xy-grid")
                xy_path = gr.Textbox(label="File", interactive=False, elem_id="xy-path")

            if hasattr(engine, "cluster_status"):  # served by Ray Serve replicas (--cluster)
                cluster_panel.add(engine)

        controls = [model, prompt, negative, strength, cfg, steps, seed, scheduler, width, height,
                    resize_mode, batch_count, batch_size]
        by_field = dict(zip(("model", "prompt", "negative_prompt", "strength", "guidance_scale",
                             "steps", "seed", "scheduler", "width", "height", "resize_mode",
                             "batch_count", "batch_size"), controls))
        gpu_event = dict(preprocess=False, concurrency_id="gpu", concurrency_limit=gpu)
        # UI helpers answer at once, even while the GPU queue is long. Those that raise toasts
        # (gr.Warning / gr.Error) go through the queue, the channel toasts travel on, with no
        # concurrency limit so they never wait behind a job.
        instant = dict(queue=False, show_progress="hidden")
        toasting = dict(show_progress="hidden", concurrency_limit=None)

        # The adapter, inpaint, memory and output settings go by name (handlers.EXTRAS).
        extras = adapters.extras
        reference = adapters.reference
        # Generate first claims the tab (a second click while its job runs is refused with a
        # message instead of being dropped), then runs the job, then frees the button.
        job = run.click(studio.claim, [session], [run], api_name="claim", trigger_mode="multiple",
                        **toasting
                        ).success(studio.generate, [session, init_image, reference, *controls],
                                  [status, preview, gallery, compare, result_info, result_path],
                                  api_name="img2img", show_progress="full",
                                  show_progress_on=[gallery], inputs_kwargs=extras, **gpu_event)
        job.success(studio.latent_files, [session], [latent_file], api_name="latent_files",
                    **instant)
        # .then alone is not run after a job that raised (gradio ends the chain there), so the
        # button is freed on both paths.
        job.then(studio.release, [session], [run], api_name="release", **instant)
        job.failure(studio.release, [session], [run], api_name="release_after_failure",
                    **instant)
        stop.click(studio.interrupt, [session], [status], api_name="interrupt", **instant)
        gallery.select(studio.select_result, [session], [compare, result_info, result_path],
                       api_name="select_result", **instant)
        to_init.click(studio.send_to_init, [session], [init_image], api_name="send_to_init",
                      **toasting)
        reuse.click(studio.reuse_seed, [session], [seed], api_name="reuse_seed", **toasting)
        dice.click(studio.random_seed, None, [seed], api_name="random_seed", **instant)
        recycle.click(studio.last_seed, [session], [seed], api_name="last_seed", **toasting)
        refresh.click(studio.refresh_models, [model], [model], api_name="refresh_models",
                      **instant)
        model.change(studio.model_changed, [model], [tiny], api_name="model_changed", **instant)
        add_negative.click(handlers.add_standard_negative, [negative], [negative],
                           api_name="standard_negative", **instant)
        strength.change(handlers.strength_band, [strength], [band], api_name="strength_band",
                        **instant)
        gr.on([strength.change, steps.change], handlers.effective_steps, [steps, strength],
              [effective], api_name="effective_steps", **instant)

        # History: this tab's results; a pick restores its settings or becomes the init image.
        history_tab.select(studio.history, [session], [history_gallery], api_name="history",
                           **instant)
        history_gallery.select(studio.select_history, [session], [history_info],
                               api_name="select_history", **instant)
        history_restore.click(studio.send_to_img2img, [history_info],
                              [{**by_field, **extras}[name] for name in handlers.FILL_FIELDS]
                              + [tabs, history_note], api_name="history_restore", **toasting)
        history_init.click(studio.history_to_init, [session], [init_image, tabs],
                           api_name="history_to_init", **toasting)

        # The page's settings survive a reload in the same browser (its local storage). With a
        # --preset the preset decides what the page starts with, so nothing is recalled then.
        remembered = [by_field[name] for name in handlers.REMEMBERED]
        memory = gr.BrowserState({}, storage_key="img2img-studio-settings")
        text_boxes = (prompt, negative)
        gr.on([box.blur for box in text_boxes] + [run.click]
              + [c.change for c in remembered if c not in text_boxes],
              studio.remember_settings, remembered, [memory], api_name="remember_settings",
              **instant)
        if initial is None:
            demo.load(studio.recall_settings, [memory], remembered, api_name="recall_settings",
                      **instant)

        png_image.change(studio.png_info, [png_image], [png_text, png_summary],
                         api_name="png_info", preprocess=False, **instant)
        fill_targets = {**by_field, **extras}
        send.click(studio.send_to_img2img, [png_text],
                   [fill_targets[name] for name in handlers.FILL_FIELDS] + [tabs, send_note],
                   api_name="send_to_img2img", **toasting)

        x_axis.change(xy.default_values, [x_axis], [x_values], api_name="xy_x_defaults",
                      **instant)
        y_axis.change(xy.default_values, [y_axis], [y_values], api_name="xy_y_defaults",
                      **instant)
        z_axis.change(xy.default_values, [z_axis], [z_values], api_name="xy_z_defaults",
                      **instant)
        # The summary of what a plot starts from: the settings that name its axes' targets.
        xy_summary = {key: extras[key] for key in (
            "loras", "lora_weights", "pag_scale",
            *(f"cn{n}_{key}" for n in range(1, handlers.CONTROLNET_UNITS + 1)
              for key in ("enabled", "model", "scale")))}
        xy_tab.select(studio.xy_base, [init_image, *controls], [xy_init, xy_base],
                      api_name="xy_base", inputs_kwargs=xy_summary, preprocess=False, **instant)
        # First the summary again and the last plot's result cleared, then the plot; a plot
        # refused before it starts still leaves a failed status, never an old "Done".
        xy_run.click(studio.xy_start, [init_image, *controls],
                     [xy_init, xy_base, xy_status, xy_preview, xy_grid, xy_path],
                     api_name="xy_start", preprocess=False,
                     inputs_kwargs=xy_summary, **instant
                     ).then(studio.xy_plot,
                            [session, init_image, reference, *controls, x_axis, x_values,
                             y_axis, y_values, z_axis, z_values],
                            [xy_status, xy_preview, xy_grid, xy_path], api_name="xy_plot",
                            show_progress="full", show_progress_on=[xy_grid],
                            inputs_kwargs=extras, **gpu_event
                            ).failure(studio.xy_failed, [xy_status], [xy_status],
                                      api_name="xy_failed", **instant)
        xy_stop.click(studio.interrupt, [session], [xy_status], api_name="xy_interrupt",
                      **instant)
        model_download.wire(studio, get_model, model, tiny)
        loopback_panel.wire(studio, loopback, session=session, generate=run,
                            inputs=[session, init_image, reference, *controls],
                            outputs=[status, preview, gallery, compare, result_info, result_path],
                            extras=extras, gpu_event=gpu_event, instant=instant,
                            toasting=toasting)
        adapters_panel.wire(studio, adapters, init_image, (img2img_tab, inpaint_tab), instant,
                            toasting)
        presets_panel.wire(panel, {**by_field, **extras}, demo, studio.models,
                          loras=studio)
    return demo
