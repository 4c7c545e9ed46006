"""The studio's event handlers: methods of plain values, so tests call them without a browser.

Every handler validates what the browser (or an API client) sent through GenerationParams and
turns each failure into a gr.Error naming the field, because a remote client can send anything
and the page must stay usable after a bad click. Only the engine's public API is used: submit a
Job, read its updates, cancel it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import gradio as gr
from PIL import Image

from .. import images as imaging
from .. import infotext
from .. import params as P
from ..engine import outputs
from ..engine.core import Engine, ImageResult, Job, Progress, QueueFull, Result
from ..engine.errors import Cancelled, InputError, ModelError
from . import xy

# What each field is called on the page, so an error points at the control to fix.
LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "strength": "Denoising strength",
    "guidance_scale": "CFG scale",
    "steps": "Sampling steps",
    "seed": "Seed",
    "scheduler": "Sampler",
    "width": "Width",
    "height": "Height",
    "resize_mode": "Resize mode",
    "batch_count": "Batch count",
    "batch_size": "Batch size",
    "model": "Model",
    "dtype": "Precision",
    "init_image": "Init image",
    "reference_image": "Reference image",
}

# The controls "Send to img2img" fills, in the order app.py wires them.
FILL_FIELDS = ("model", "prompt", "negative_prompt", "strength", "guidance_scale", "steps", "seed",
               "scheduler", "width", "height", "resize_mode", "batch_count", "batch_size")

REFERENCE_NOTE = ("Reference image received, but IP-Adapter is not wired to the engine yet: it "
                  "does not change the result.")
# Streaming every step of a fast model would flood the browser; a few updates a second is live.
UPDATE_INTERVAL = 0.2
GRIDS_SUBDIR = "img2img-grids"
# API clients may leave out any setting; it then takes the params.py default.
_D = P.default
_AXES = list(xy.AXES)


def tiny_notice(engine: Engine) -> str:
    return (f"The built-in tiny-random model only makes noise. Put a .safetensors checkpoint in "
            f"{engine.registry.checkpoints_dir}/ or pass --model.")


def strength_band(strength: float | None) -> str:
    """The live label under the denoising slider: the guide's band for the value."""
    try:
        strength = P.make(strength=strength).strength
    except P.ParamsError:
        return "Denoising strength must be between 0 and 1."
    band = P.band_of(strength)
    if band == "original":
        return "**0: returns the original image**, nothing is denoised."
    lo, hi = P.BANDS[band]
    meaning = {"subtle": "keeps the picture, touches up detail and colour",
               "medium": "keeps the composition, repaints the surface",
               "overhaul": "keeps little more than colours and layout"}[band]
    return f"**{band}** ({lo:g}–{hi:g}): {meaning}. 0 returns the original."


def effective_steps(steps: float | None, strength: float | None) -> str:
    try:
        p = P.make(steps=steps, strength=strength)
    except P.ParamsError:
        return "effective steps: steps × strength"
    return f"effective steps: {p.steps} × {p.strength:g} = **{p.effective_steps}**"


def add_standard_negative(negative: str | None) -> str:
    """The negative prompt with the guide's standard terms appended, none of them twice."""
    text = (negative or "").strip().rstrip(",").strip()
    have = {term.strip().casefold() for term in text.split(",") if term.strip()}
    missing = [term.strip() for term in P.STANDARD_NEGATIVE.split(",")
               if term.strip() and term.strip().casefold() not in have]
    if not missing:
        return negative or ""
    return ", ".join(([text] if text else []) + missing)


def describe(progress: Progress) -> str:
    """One status line for a job's progress."""
    if progress.stage == "queued":
        if progress.position:
            ahead = "job" if progress.position == 1 else "jobs"
            return f"⏳ In the queue: {progress.position} {ahead} ahead of yours."
        return "⏳ Starting…"
    if progress.stage == "loading":
        return "Loading the model…"
    if progress.stage == "saving":
        return "Saving…"
    parts = [f"Step {progress.step}/{progress.total}"]
    if progress.images > 1:
        parts.append(f"batch {progress.image + 1}/{progress.images}")
    if progress.eta is not None:
        parts.append(f"ETA {progress.eta:.1f} s")
    parts.append(f"{progress.elapsed:.1f} s elapsed")
    return " · ".join(parts)


class GenerateView(NamedTuple):
    """The outputs of /img2img, in app.py's wiring order."""

    status: Any
    preview: Any
    gallery: Any
    compare: Any
    infotext: Any
    path: Any


class XYView(NamedTuple):
    """The outputs of /xy_plot, in app.py's wiring order."""

    status: Any
    preview: Any
    grid: Any
    path: Any


class Session:
    """One browser tab's jobs and last results (kept in a gr.State, so tabs never see each
    other's previews, results or interrupt)."""

    def __init__(self) -> None:
        self.jobs: set[Job] = set()
        self.interrupted = False
        self.results: list[ImageResult] = []
        self.selected = 0
        self.seed: int | None = None
        self.before: Image.Image | None = None  # the init image as the engine saw it

    def start(self) -> None:
        """A new run (a job or a whole X/Y plot): forget an earlier interrupt."""
        self.interrupted = False

    def track(self, job: Job) -> None:
        self.jobs.add(job)

    def cancel(self) -> int:
        """Interrupt this tab's jobs; the number that were running or waiting."""
        self.interrupted = True
        running = [job for job in self.jobs if not job.done]
        for job in running:
            job.cancel()
        return len(running)

    @property
    def current(self) -> ImageResult | None:
        if not self.results:
            return None
        return self.results[min(self.selected, len(self.results) - 1)]


def _error(message: str, title: str = "Error") -> gr.Error:
    # Expected input problems: a toast for the artist, no traceback in the server log.
    return gr.Error(message, title=title, print_exception=False)


def _fail(field: str, message: str) -> gr.Error:
    """A gr.Error that names the field as the page labels it."""
    label = LABELS.get(field, field)
    text = str(message)
    # Engine and params messages start with the raw field name; show the page's name instead.
    if text.startswith(f"{field}: "):
        text = f"{label}: {text[len(field) + 2:]}"
    elif text.startswith(f"{field} "):
        text = label + text[len(field):]
    else:
        text = f"{label}: {text}"
    return _error(text, title=label)


def _with_infotext(item: ImageResult) -> Image.Image:
    # The gallery re-encodes images as PNG and copies their text chunks, so a downloaded result
    # keeps its parameters.
    item.image.info["parameters"] = item.infotext
    return item.image


def _size(value) -> int | None:
    if value in (None, "", 0, 0.0):
        return None
    return value


class Studio:
    """The handlers, bound to one engine. app.py wires each method to an event."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- inputs ------------------------------------------------------------------------------
    def models(self) -> list[str]:
        names = self.engine.models()
        if self.engine.model and self.engine.model not in names:
            names.insert(0, self.engine.model)
        return names

    def _model(self, name) -> str:
        name = (name or "").strip() if isinstance(name, str) else name
        if not name:
            return self.engine.model
        known = self.models()
        if name not in known:
            # Only listed models: a shared page must not load arbitrary paths on the server.
            raise _fail("model", f"{name!r} is not one of this studio's models ("
                        f"{', '.join(known)}); put checkpoints in "
                        f"{self.engine.registry.checkpoints_dir}/ and press 🔄")
        return name

    def build_params(self, model, prompt, negative_prompt, strength, guidance_scale, steps, seed,
                     scheduler, width, height, resize_mode, batch_count, batch_size
                     ) -> P.GenerationParams:
        values = dict(
            model=self._model(model), prompt=prompt or "", negative_prompt=negative_prompt or "",
            strength=strength, guidance_scale=guidance_scale, steps=steps,
            seed=P.default("seed") if seed in (None, "") else seed, scheduler=scheduler,
            width=_size(width), height=_size(height), resize_mode=resize_mode,
            batch_count=batch_count, batch_size=batch_size,
        )
        try:
            return P.make(**values)
        except P.ParamsError as exc:
            raise _fail(exc.field, str(exc)) from None

    @staticmethod
    def load_image(source, field: str = "init_image") -> Image.Image:
        """An RGB image from what the browser or a test sent: a PIL image, an uploaded file's
        payload (already checked by gradio to lie in its upload cache) or a Path."""
        if isinstance(source, dict):
            source = source.get("path")
            if source is None:
                raise _fail(field, "the upload did not arrive; upload the image again")
            source = Path(source)
        elif isinstance(source, str):
            # A bare string from the API would be a path on the server: never open those.
            raise _fail(field, "send the image as a file (gradio_client.handle_file), not as text")
        if source is None:
            what = "upload a picture to transform" if field == "init_image" else "upload an image"
            raise _fail(field, f"no image given: {what}")
        try:
            return imaging.load_image(source, field)
        except InputError as exc:
            raise _fail(exc.field, str(exc)) from None

    def _submit(self, session: Session, params: P.GenerationParams, init, save: bool) -> Job:
        try:
            job = self.engine.submit(params, init, save=save)
        except QueueFull as exc:
            raise _error(str(exc), title="Busy") from None
        session.track(job)
        return job

    @staticmethod
    def _result(job: Job) -> Result | None:
        """The job's result; None when it was interrupted before producing anything."""
        try:
            return job.result()
        except Cancelled:
            return None
        except (InputError, P.ParamsError) as exc:
            raise _fail(exc.field, str(exc)) from None
        except ModelError as exc:
            raise _error(str(exc), title="Model") from None

    @staticmethod
    def _follow(job: Job) -> Iterator[Progress]:
        """The job's progress, thinned to a few updates a second (stage changes always pass)."""
        last, stage = 0.0, None
        for progress in job.updates():
            now = time.monotonic()
            if progress.stage != stage or now - last >= UPDATE_INTERVAL:
                last, stage = now, progress.stage
                yield progress

    # -- img2img -----------------------------------------------------------------------------
    def generate(self, session: Session, init_image, reference_image=None, model=None,
                 prompt=None, negative_prompt=None, strength=_D("strength"),
                 guidance_scale=_D("guidance_scale"), steps=_D("steps"), seed=_D("seed"),
                 scheduler=_D("scheduler"), width=0, height=0, resize_mode=_D("resize_mode"),
                 batch_count=_D("batch_count"), batch_size=_D("batch_size")
                 ) -> Iterator[GenerateView]:
        """Run one img2img job: yields progress with live previews, then the results."""
        session = session if session is not None else Session()
        params = self.build_params(model, prompt, negative_prompt, strength, guidance_scale,
                                   steps, seed, scheduler, width, height, resize_mode,
                                   batch_count, batch_size)
        init = self.load_image(init_image, "init_image")
        notes = []
        if reference_image is not None:
            self.load_image(reference_image, "reference_image")
            notes.append(REFERENCE_NOTE)
        session.start()
        job = self._submit(session, params, init, save=True)
        skip = gr.skip()
        last = Progress("queued")
        try:
            yield GenerateView(describe(last), skip, skip, skip, skip, skip)
            for last in self._follow(job):
                preview = last.preview if last.preview is not None else skip
                yield GenerateView(describe(last), preview, skip, skip, skip, skip)
            result = self._result(job)
        finally:
            session.jobs.discard(job)
            if not job.done:
                # The browser went away mid-job: free the GPU for the others.
                job.cancel()
        if result is None:
            yield GenerateView("Interrupted before the first image was ready.", skip, skip, skip,
                               skip, skip)
            return
        session.results, session.selected, session.seed = result.images, 0, result.seed
        session.before = result.init
        yield GenerateView(self._summary(result, last, notes), skip, *self._show(session))

    def _summary(self, result: Result, last: Progress, notes: list[str]) -> str:
        n = len(result.images)
        p = result.params
        head = (f"seed {result.seed} · {result.width}×{result.height} · effective steps "
                f"{result.effective_steps} ({p.steps} × {p.strength:g}) · {result.elapsed:.1f} s")
        if result.interrupted:
            where = f" at step {last.step}/{last.total}" if last.stage == "sampling" else ""
            text = (f"**Interrupted**{where}: {n} partly finished image{'s' * (n != 1)} shown, "
                    f"not saved · {head}")
        else:
            text = f"**Done**: {n} image{'s' * (n != 1)} · {head}"
        lines = [text] + ([result.notice] if result.notice else []) + notes
        return "\n\n".join(lines)

    def _show(self, session: Session) -> tuple:
        """(gallery, compare, infotext, path) for the session's results."""
        items = session.results
        gallery = [(_with_infotext(item), f"seed {item.seed}") for item in items]
        return (gallery, *self._selected(session))

    def _selected(self, session: Session) -> tuple:
        item = session.current
        if item is None:
            return None, "", ""
        compare = (session.before, item.image) if session.before is not None else None
        path = str(item.path) if item.path else "(not saved: the job was interrupted)"
        return compare, item.infotext, path

    def select_result(self, session: Session, evt: gr.SelectData) -> tuple:
        """A gallery click: that image's comparison, infotext and file path."""
        session.selected = int(evt.index) if evt is not None and evt.index is not None else 0
        return self._selected(session)

    def interrupt(self, session: Session) -> str:
        """Stop this tab's job (other people's jobs are never touched)."""
        if session is None or not session.cancel():
            return "Nothing of yours is running."
        return "Interrupting… the partly finished image will be shown."

    def send_to_init(self, session: Session):
        item = session.current if session is not None else None
        if item is None:
            raise _error("Nothing to send yet: generate an image first.", title="Loopback")
        return item.image

    def reuse_seed(self, session: Session):
        """The selected result's seed, so the next job reproduces it."""
        item = session.current if session is not None else None
        if item is None:
            gr.Warning("No result yet: generate an image first.")
            return gr.skip()
        return item.seed

    def last_seed(self, session: Session):
        """The seed the last job used (what a -1 turned into)."""
        if session is None or session.seed is None:
            gr.Warning("No seed used yet: generate an image first.")
            return gr.skip()
        return session.seed

    def random_seed(self) -> int:
        return P.default("seed")

    def refresh_models(self, current: str | None = None):
        choices = self.models()
        value = current if current in choices else self.engine.model
        return gr.update(choices=choices, value=value)

    def model_changed(self, model: str | None):
        """Show the tiny-model notice only while the tiny model is picked."""
        return gr.update(visible=self.engine.is_tiny(model or ""))

    # -- PNG Info ----------------------------------------------------------------------------
    def png_info(self, image) -> tuple[str, str]:
        """(raw parameters text, readable summary) of a dropped PNG."""
        if image is None:
            return "", "Drop a PNG here to read the settings it was made with."
        if isinstance(image, Image.Image):
            picture = image
        else:
            if isinstance(image, dict):
                image = image.get("path")
            if not isinstance(image, (str, Path)) or not Path(image).is_file():
                return "", "The upload did not arrive; drop the image again."
            try:
                picture = Image.open(image)
            except (OSError, SyntaxError, ValueError):
                return "", "**Not an image file** (PNG, JPEG, WebP, ...)."
        text = outputs.read_infotext(picture)
        if not text:
            return "", ("This image carries no generation parameters (it may have been "
                        "re-saved by another program, or never had any).")
        return text, self._parsed_summary(infotext.parse(text))

    @staticmethod
    def _parsed_summary(parsed: infotext.Parsed) -> str:
        rows = ["| setting | value |", "|---|---|"]
        values = parsed.params.model_dump()
        for name in FILL_FIELDS:
            if name in parsed.fields and name not in ("prompt", "negative_prompt"):
                rows.append(f"| {LABELS[name]} | {xy.value_label(values[name])} |")
        for key, value in parsed.extras.items():
            rows.append(f"| {key} | {value} |")
        parts = ["\n".join(rows)]
        if parsed.warnings:
            parts.append("**Not usable here:**\n" + "\n".join(f"- {w}" for w in parsed.warnings))
        return "\n\n".join(parts)

    def send_to_img2img(self, text: str | None) -> tuple:
        """Updates for FILL_FIELDS (only the ones the text sets), then the tab switch and a
        message listing what could not be used."""
        if not (text or "").strip():
            raise _error("Drop a PNG with generation parameters first.", title="PNG Info")
        parsed = infotext.parse(text)
        warnings = list(parsed.warnings)
        values = parsed.params.model_dump()
        updates = []
        for name in FILL_FIELDS:
            if name not in parsed.fields:
                updates.append(gr.skip())
                continue
            value = values[name]
            if name == "model":
                value = self._known_model(value)
                if value is None:
                    warnings.append(f"Model: {values['model']!r} is not available here; kept the "
                                    "current model")
                    updates.append(gr.skip())
                    continue
            if name in ("width", "height") and value is None:
                value = 0
            updates.append(value)
        for warning in warnings:
            gr.Warning(warning)
        filled = [LABELS[n] for n, u in zip(FILL_FIELDS, updates) if not isinstance(u, dict)]
        message = "Filled: " + (", ".join(filled) or "nothing") + "."
        if warnings:
            message += "\n\n**Not used:**\n" + "\n".join(f"- {w}" for w in warnings)
        return (*updates, gr.Tabs(selected="img2img"), message)

    def _known_model(self, name: str) -> str | None:
        for known in self.models():
            if name in (known, Path(known).stem, Path(known).name):
                return known
        return None

    # -- X/Y plot ----------------------------------------------------------------------------
    def xy_plot(self, session: Session, init_image, reference_image=None, model=None,
                prompt=None, negative_prompt=None, strength=_D("strength"),
                guidance_scale=_D("guidance_scale"), steps=_D("steps"), seed=_D("seed"),
                scheduler=_D("scheduler"), width=0, height=0, resize_mode=_D("resize_mode"),
                batch_count=1, batch_size=1, x_axis=_AXES[0], x_values=xy.default_values(_AXES[0]),
                y_axis=_AXES[1], y_values=xy.default_values(_AXES[1])) -> Iterator[XYView]:
        """The same seed over a grid of two settings, rendered as one labelled image."""
        del batch_count, batch_size  # one image per cell, whatever the main tab says
        session = session if session is not None else Session()
        base = self.build_params(model, prompt, negative_prompt, strength, guidance_scale, steps,
                                 seed, scheduler, width, height, resize_mode, 1, 1)
        try:
            grid_plan = xy.plan(x_axis, x_values, y_axis, y_values, base)
        except xy.AxisError as exc:
            raise _error(str(exc), title=exc.field) from None
        init = self.load_image(init_image, "init_image")
        if base.seed < 0:
            # One seed for every cell, or the grid compares noise instead of settings.
            base = base.replace(seed=random.randint(0, P.MAX_SEED))
        nx, ny = len(grid_plan.x_values), len(grid_plan.y_values)
        cells: list[list[Image.Image | None]] = [[None] * nx for _ in range(ny)]
        skip = gr.skip()
        session.start()
        done, stopped, last_result = 0, False, None
        yield XYView(f"X/Y plot: {grid_plan.cells} cells, seed {base.seed}", skip, skip, skip)
        for yi in range(ny):
            for xi in range(nx):
                if session.interrupted:
                    stopped = True
                    break
                cell = grid_plan.params_for(base, xi, yi)
                where = (f"Cell {done + 1}/{grid_plan.cells} ({grid_plan.x_axis} "
                         f"{xy.value_label(grid_plan.x_values[xi])}, {grid_plan.y_axis} "
                         f"{xy.value_label(grid_plan.y_values[yi])})")
                job = self._submit(session, cell, init, save=False)
                try:
                    for progress in self._follow(job):
                        preview = progress.preview if progress.preview is not None else skip
                        yield XYView(f"{where} · {describe(progress)}", preview, skip, skip)
                    result = self._result(job)
                finally:
                    session.jobs.discard(job)
                    if not job.done:
                        job.cancel()
                if result is None or result.interrupted:
                    stopped = True
                if result is not None and result.images:
                    cells[yi][xi] = result.images[0].image
                    last_result = result
                    done += 1
                if stopped:
                    break
            if stopped:
                break
        if last_result is None:
            yield XYView("X/Y plot interrupted before the first cell was ready.", skip, skip, skip)
            return
        grid = xy.render(cells, grid_plan.x_axis, grid_plan.x_values, grid_plan.y_axis,
                         grid_plan.y_values)
        text = infotext.format(
            base, seed=base.seed, width=last_result.width, height=last_result.height,
            model_name=last_result.model,
            extra={"X/Y plot": f"{grid_plan.x_axis} ({', '.join(map(xy.value_label, grid_plan.x_values))}) "
                               f"x {grid_plan.y_axis} ({', '.join(map(xy.value_label, grid_plan.y_values))})"})
        grid.image.info["parameters"] = text
        if stopped:
            yield XYView(f"**Interrupted**: {done}/{grid_plan.cells} cells done, grid not saved.",
                         skip, grid.image, "")
            return
        folder = outputs.day_folder(self.engine.outputs_dir, kind=GRIDS_SUBDIR)
        path = outputs.write_png(outputs.png_bytes(grid.image, text), folder, base.seed)
        yield XYView(f"**Done**: {grid_plan.cells} cells, seed {base.seed}.", skip, grid.image,
                     str(path))
