"""The studio's event handlers: methods of plain values, so tests call them without a browser.

Every handler validates what the browser (or an API client) sent through GenerationParams and
turns each failure into a gr.Error naming the field, because a remote client can send anything
and the page must stay usable after a bad click. Only the engine's public API is used: submit a
Job, read its updates, cancel it.

The field labels and keyword inputs live in fields.py, turning the page's values into a job's
settings in requests.py and PNG Info in pnginfo.py; `Studio` joins them with the job handlers
here, and this module still offers their names, as the page and its tests import them from here.
"""

from __future__ import annotations

import copy
import inspect
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import gradio as gr
from PIL import Image

from .. import params as P
from .. import xyplot
from ..engine import (CHECKPOINTS_SUBDIR, CONTROLNET_SUBDIR, IP_ADAPTER_SUBDIR, AdapterError,
                      Cancelled, ImageResult, InputError, Inputs, JobRequest, ModelError,
                      OutOfMemory, Progress, QueueFull, Result, TimedOut, WorkerLost)
from ..params import MODES
from . import loopback as loopback_loop
from . import xy
from .fields import (CONTROLNET_UNITS, EXTRAS, FILL_FIELDS, LABELS, LORA_HEADERS, _error, _fail,
                     _keyword_extras, shown_folder)
from .pnginfo import PngInfoHandlers
from .requests import REFERENCE_NOTE, RequestBuilder, _lora_rows

if TYPE_CHECKING:
    # Annotations only: importing the in-process engine loads torch, which the studio's
    # modules never do themselves (launch.py builds the engine).
    from ..engine import Engine, Job

# The page's modules and tests import these from here, including the names defined elsewhere.
__all__ = [
    "BUSY_MESSAGE", "CHECKPOINTS_SUBDIR", "CLAIM_WINDOW", "CONTROLNET_SUBDIR", "CONTROLNET_UNITS",
    "EXTRAS", "FILL_FIELDS", "GenerateView", "HISTORY_LIMIT", "IP_ADAPTER_SUBDIR", "LABELS",
    "LORA_HEADERS", "MODES", "REFERENCE_NOTE", "REMEMBERED", "Session", "Studio",
    "UPDATE_INTERVAL", "XYView", "add_standard_negative", "describe", "effective_steps",
    "shown_folder", "strength_band", "tiny_notice",
]

log = logging.getLogger(__name__)

# Streaming every step of a fast model would flood the browser; a few updates a second is live.
UPDATE_INTERVAL = 0.2
# How long a Generate click holds the tab's slot before its job reaches the engine (the job then
# holds it itself); a click whose job never came frees the tab after this.
CLAIM_WINDOW = 60.0
# Seconds an interrupted job's last status waits before it is sent: the Interrupt click answers
# "Interrupting…" in the same status line, and a job that stops at once (inside its step)
# could otherwise end before that answer lands and be overwritten by it.
INTERRUPT_SETTLE = 0.5
# Results the History view keeps per browser tab: pictures live in the server's memory.
HISTORY_LIMIT = 48
# What the page remembers in the browser between reloads (browser storage), by field.
REMEMBERED = ("model", "prompt", "negative_prompt", "strength", "guidance_scale", "steps", "seed",
              "scheduler", "width", "height", "resize_mode", "batch_count", "batch_size")
BUSY_MESSAGE = ("Your job is still running: wait for it to finish, or press Interrupt (Esc) to "
                "stop it.")
# API clients may leave out any setting; it then takes the params.py default.
_D = P.default
_AXES = list(xy.AXES)


def tiny_notice(engine: Engine) -> str:
    return (f"The built-in tiny-random model only makes noise: open **Get a model** (top right) "
            f"or put a .safetensors checkpoint in {shown_folder(engine, CHECKPOINTS_SUBDIR)}.")


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
    if progress.batch_count > 1:
        parts.append(f"batch {progress.batch_index + 1}/{progress.batch_count}")
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
        # The generate thread adds and drops jobs while an Interrupt (another thread) reads them.
        self._lock = threading.Lock()
        self.interrupted = False
        self.results: list[ImageResult] = []
        self.selected = 0
        self.seed: int | None = None
        self.before: Image.Image | None = None  # the init image as the engine saw it
        self.claimed: float | None = None  # when Generate was pressed, until its job is tracked
        self.history: list[ImageResult] = []  # this tab's results, newest first
        self.history_selected: int | None = None

    def __deepcopy__(self, memo) -> "Session":
        # Gradio copies a State's value once for each new browser session; a lock cannot be
        # copied, and each copy needs its own anyway.
        clone = Session.__new__(Session)
        clone.__dict__.update({key: copy.deepcopy(value, memo)
                               for key, value in self.__dict__.items() if key != "_lock"})
        clone._lock = threading.Lock()
        return clone

    def start(self) -> None:
        """A new run (a job or a whole X/Y plot): forget an earlier interrupt."""
        self.interrupted = False

    def track(self, job: Job) -> None:
        with self._lock:
            self.jobs.add(job)

    def forget(self, job: Job) -> None:
        with self._lock:
            self.jobs.discard(job)

    @property
    def busy(self) -> bool:
        """A job of this tab is running or waiting, or Generate was pressed a moment ago and its
        job is on its way to the queue."""
        with self._lock:
            running = any(not job.done for job in self.jobs)
        fresh = self.claimed is not None and time.monotonic() - self.claimed < CLAIM_WINDOW
        return running or fresh

    def remember(self, items: list[ImageResult]) -> None:
        """Add a job's pictures to the History view (newest first, bounded)."""
        self.history = (list(reversed(items)) + self.history)[:HISTORY_LIMIT]
        self.history_selected = None

    def cancel(self) -> int:
        """Interrupt this tab's jobs; the number that were running or waiting."""
        self.interrupted = True
        with self._lock:
            running = [job for job in self.jobs if not job.done]
        for job in running:
            job.cancel()
        return len(running)

    @property
    def current(self) -> ImageResult | None:
        if not self.results:
            return None
        return self.results[min(self.selected, len(self.results) - 1)]


def _user(request) -> str | None:
    """The logged-in user a request comes from (None without a login, or outside a request)."""
    return getattr(request, "username", None) or None


def _saved_as(path: Path) -> str:
    # The file's name only: where the server keeps results is not the page's business.
    return f"saved as {path.name}"


def _with_infotext(item: ImageResult) -> Image.Image:
    # The gallery re-encodes images as PNG and copies their text chunks, so a downloaded result
    # keeps its parameters.
    item.image.info["parameters"] = item.infotext
    return item.image


class Studio(RequestBuilder, PngInfoHandlers):
    """The handlers, bound to one engine. app.py wires each method to an event; the methods
    that turn the page's values into settings (RequestBuilder) and the PNG Info ones
    (PngInfoHandlers) live in modules of their own."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._downloads: Path | None = None  # copies of result files handed to gradio

    # -- jobs --------------------------------------------------------------------------------
    def _submit(self, session: Session, params: P.GenerationParams, init, save: bool,
                inputs: Inputs | None = None, owner: str | None = None) -> Job:
        inputs = inputs or Inputs()
        # A request, not the in-process shorthand: the engine confines every name in it to the
        # models folder, behind the page's own checks.
        request = JobRequest(params, init, mask=inputs.mask, ip_image=inputs.ip_image,
                             control_images=inputs.control_images, latents=inputs.latents,
                             color_reference=inputs.color_reference,
                             infotext_extra=inputs.infotext_extra, save=save, owner=owner)
        try:
            job = self.engine.submit(request)
        except QueueFull as exc:
            raise _error(str(exc), title="Busy") from None
        except (InputError, AdapterError) as exc:
            raise _fail(exc.field, self._unplaced(str(exc))) from None
        session.track(job)
        return job

    def _result(self, job: Job) -> Result | None:
        """The job's result; None when it was interrupted before producing anything. Errors
        become toasts, with the server's own folders named as the page names them."""
        try:
            return job.result()
        except TimedOut as exc:
            text = str(exc)
            raise _error(text[:1].upper() + text[1:], title="Time limit") from None
        except Cancelled:
            return None
        except (InputError, P.ParamsError, AdapterError) as exc:
            raise _fail(exc.field, self._unplaced(str(exc))) from None
        except ModelError as exc:
            raise _error(self._unplaced(str(exc)), title="Model") from None
        except OutOfMemory as exc:
            text = str(exc)
            raise _error(text[:1].upper() + text[1:], title="Out of GPU memory") from None
        except WorkerLost as exc:
            text = str(exc)
            raise _error(text[:1].upper() + text[1:], title="GPU worker stopped") from None
        except Exception as exc:  # noqa: BLE001 - a library failure must still reach the artist
            log.exception("job %s failed", job.id)
            raise _error(self._unplaced(f"The job failed ({type(exc).__name__}: {exc}). The "
                                        "studio keeps working; change the settings and try "
                                        "again."), title="Job failed") from None

    @staticmethod
    def _follow(job: Job) -> Iterator[Progress]:
        """The job's progress, thinned to a few updates a second (stage changes always pass)."""
        last, stage = 0.0, None
        for progress in job.updates():
            now = time.monotonic()
            if progress.stage != stage or now - last >= UPDATE_INTERVAL:
                last, stage = now, progress.stage
                yield progress

    # -- img2img ----------------------------------------------------------------------------
    @_keyword_extras
    def generate(self, session: Session, init_image, reference_image=None, model=None,
                 prompt=None, negative_prompt=None, strength=_D("strength"),
                 guidance_scale=_D("guidance_scale"), steps=_D("steps"), seed=_D("seed"),
                 scheduler=_D("scheduler"), width=0, height=0, resize_mode=_D("resize_mode"),
                 batch_count=_D("batch_count"), batch_size=_D("batch_size"),
                 request: gr.Request = None, **extras) -> Iterator[GenerateView]:
        """Run one img2img (or, with mode 'inpaint', inpaint) job: yields progress with live
        previews, then the results. `extras`: the EXTRAS settings, by keyword.

        A failure keeps the previous results on the page: the status line says what failed, the
        live preview is cleared, and the error goes up as the toast."""
        session = session if session is not None else Session()
        basic = (model, prompt, negative_prompt, strength, guidance_scale, steps, seed, scheduler,
                 width, height, resize_mode, batch_count, batch_size)
        yield from self._keeping_results(session, self._generate(
            session, init_image, reference_image, basic, request, extras))

    @staticmethod
    def _keeping_results(session: Session, run: Iterator[GenerateView]
                         ) -> Iterator[GenerateView]:
        """`run`'s views; on a failure, one more that says so in the status line and clears
        the live preview, leaving the results on the page (the error then goes up as the
        toast). The tab is free again afterwards, however the run ended."""
        try:
            yield from run
        except gr.Error as exc:
            skip = gr.skip()
            yield GenerateView(f"**Failed**: {exc.message}", None, skip, skip, skip, skip)
            raise
        finally:
            session.claimed = None

    def _generate(self, session: Session, init_image, reference_image, basic: tuple, request,
                  extras: dict) -> Iterator[GenerateView]:
        notes: list[str] = []
        params, init, inputs = self._request(init_image, reference_image, basic, extras, notes)
        session.start()
        job = self._submit(session, params, init, save=True, inputs=inputs, owner=_user(request))
        session.claimed = None  # the tracked job keeps the tab busy from here
        skip = gr.skip()
        last = Progress("queued")
        try:
            yield GenerateView(describe(last), skip, skip, skip, skip, skip)
            for last in self._follow(job):
                preview = last.preview if last.preview is not None else skip
                yield GenerateView(describe(last), preview, skip, skip, skip, skip)
            result = self._result(job)
        finally:
            session.forget(job)
            if not job.done:
                # The browser went away mid-job: free the GPU for the others.
                job.cancel()
        if session.interrupted:
            time.sleep(INTERRUPT_SETTLE)
        if result is None:
            yield GenerateView("Interrupted before the first image was ready.", None, skip, skip,
                               skip, skip)
            return
        session.results, session.selected, session.seed = result.images, 0, result.seed
        session.before = result.init
        session.remember(result.images)
        # The preview is cleared: the result takes its place in the output area.
        yield GenerateView(self._summary(result, last, notes), None, *self._show(session))

    def claim(self, session: Session):
        """Generate pressed: refuse with a message while this tab's job still runs (a click is
        never silently dropped), else mark the button as running."""
        if session is not None and session.busy:
            raise _error(BUSY_MESSAGE, title="Busy")
        if session is not None:
            session.claimed = time.monotonic()
        return gr.update(value="Generating… (Esc stops)", elem_classes=["running"])

    def release(self, session: Session):
        """The job ended (done, interrupted or failed): Generate is ready again."""
        if session is not None:
            session.claimed = None
        return gr.update(value="Generate", elem_classes=[])

    # -- history -----------------------------------------------------------------------------
    def history(self, session: Session) -> list:
        """The History view's gallery: this tab's results, newest first."""
        items = session.history if session is not None else []
        return [(item.image, f"seed {item.seed}") for item in items]

    def select_history(self, session: Session, evt: gr.SelectData) -> str:
        """A History click: that result's settings, as its infotext."""
        if session is None or evt is None or evt.index is None:
            return ""
        index = int(evt.index)
        if not 0 <= index < len(session.history):
            return ""
        session.history_selected = index
        return session.history[index].infotext

    def history_to_init(self, session: Session):
        """The picked History result as the init image, and back to the img2img tab."""
        items = session.history if session is not None else []
        index = session.history_selected if session is not None else None
        if index is None or not 0 <= index < len(items):
            raise _error("Pick a result in the History first.", title="History")
        return items[index].image, gr.Tabs(selected="img2img")

    # -- browser memory ----------------------------------------------------------------------
    @staticmethod
    def remember_settings(*values) -> dict:
        """What the browser stores for the next visit: the REMEMBERED fields' page values."""
        return dict(zip(REMEMBERED, values))

    def recall_settings(self, stored) -> tuple:
        """The REMEMBERED controls' values from the browser's storage. The storage is the
        client's to change, so each value is checked as a setting of its own; one that is not
        valid here any more (a model since removed, a range since narrowed) is left at the
        page's default, and so is anything that is not a stored dict."""
        stored = stored if isinstance(stored, dict) else {}
        return tuple(self._recalled(name, stored.get(name)) for name in REMEMBERED)

    def _recalled(self, name: str, value):
        if value is None:
            return gr.skip()
        if name == "model":
            return value if isinstance(value, str) and value in self.models() else gr.skip()
        if name in ("width", "height"):
            _, hi = P.field_range(name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value == int(value) and 0 <= value <= hi
            return int(value) if ok else gr.skip()
        try:
            checked = P.GenerationParams(**{name: value})
        except (P.ParamsError, ValueError, TypeError):
            return gr.skip()
        return getattr(checked, name)

    def latent_files(self, session: Session):
        """The .safetensors files of the last job's latent output, for download (hidden when
        the output was pictures)."""
        items = session.results if session is not None else []
        files = [item.path for item in items
                 if item.path is not None and item.path.suffix == ".safetensors"]
        if not files:
            return gr.update(value=None, visible=False)
        # The outputs folder is never served as such (other users' results live there): a copy
        # in a folder of its own goes to gradio, which serves it under a content-hash name.
        if self._downloads is None:
            self._downloads = Path(tempfile.mkdtemp(prefix="img2img-downloads-"))
        folder = Path(tempfile.mkdtemp(dir=self._downloads))
        copies = [str(shutil.copy2(path, folder / path.name)) for path in files]
        return gr.update(value=copies, visible=True)

    def _summary(self, result: Result, last: Progress, notes: list[str]) -> str:
        n = len(result.images)
        p = result.params
        head = (f"seed {result.seed} · {result.width}×{result.height} · effective steps "
                f"{result.effective_steps} ({p.steps} × {p.strength:g}) · {result.elapsed:.1f} s")
        if result.worker:  # a cluster replica ran it
            head += f" · {result.worker}"
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
        path = _saved_as(item.path) if item.path else "(not saved: the status line says why)"
        return compare, item.infotext, path

    def select_result(self, session: Session, evt: gr.SelectData) -> tuple:
        """A gallery click: that image's comparison, infotext and file path."""
        session.selected = int(evt.index) if evt is not None and evt.index is not None else 0
        return self._selected(session)

    def interrupt(self, session: Session) -> str:
        """Stop this tab's job (other people's jobs are never touched)."""
        if session is None:
            return "Nothing of yours is running."
        between = session.busy  # e.g. a loopback between two passes: no job, but a run
        if not session.cancel() and not between:
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
        names = self.models()
        value = current if current in names else self.engine.model
        return gr.update(choices=self.model_choices(names), value=value)

    def model_changed(self, model: str | None):
        """Show the tiny-model notice only while the tiny model is picked."""
        return gr.update(visible=self.engine.is_tiny(model or ""))

    # -- loopback ----------------------------------------------------------------------------
    @_keyword_extras
    def loopback(self, session: Session, init_image, reference_image=None, model=None,
                 prompt=None, negative_prompt=None, strength=_D("strength"),
                 guidance_scale=_D("guidance_scale"), steps=_D("steps"), seed=_D("seed"),
                 scheduler=_D("scheduler"), width=0, height=0, resize_mode=_D("resize_mode"),
                 batch_count=_D("batch_count"), batch_size=_D("batch_size"),
                 request: gr.Request = None, *,
                 loopback_passes=loopback_loop.DEFAULT_PASSES,
                 loopback_strength_factor=loopback_loop.DEFAULT_FACTOR,
                 loopback_color_correction=loopback_loop.DEFAULT_COLOR_CORRECTION,
                 **extras) -> Iterator[GenerateView]:
        """Run `loopback_passes` img2img passes, each on the previous pass's picture (see
        loopback.py): the inputs of `generate`, plus

        loopback_passes: 2-32, default 4: how many passes run.
        loopback_strength_factor: 0.5-1.5, default 1: each pass's denoising strength is the
            previous one's times this, kept within 0-1.
        loopback_color_correction: default True: match every pass's colours to the first init
            image (the Colour correction setting of Generate is not used here).

        Batch count and size are set to 1; the seed goes up by one per pass. Every pass is saved
        and shown, and becomes the session's results (Send to init, Reuse seed)."""
        session = session if session is not None else Session()
        basic = (model, prompt, negative_prompt, strength, guidance_scale, steps, seed, scheduler,
                 width, height, resize_mode, batch_count, batch_size)
        # The passes done so far stay in the gallery; only the status says what failed.
        yield from self._keeping_results(session, loopback_loop.run(
            self, session, init_image, reference_image, basic, request, extras, loopback_passes,
            loopback_strength_factor, loopback_color_correction))

    # -- adapter helpers ---------------------------------------------------------------------
    def mask_background(self, init):
        """The mask editor for a new init image: the picture to paint on, no strokes yet."""
        if init is None:
            return gr.skip()
        try:
            image = self.load_image(init, "init_image")
        except gr.Error:
            return gr.skip()  # Generate reports a bad picture, naming the field
        return {"background": image, "layers": [], "composite": image}

    @staticmethod
    def lora_table(selected, table):
        """One weight row per picked LoRA; a LoRA that already had a row keeps its weight."""
        weights = dict(_lora_rows(table))
        rows = [[name, weights.get(name, 1.0)] for name in (selected or [])]
        return gr.update(value={"headers": LORA_HEADERS, "data": rows}, visible=bool(rows))

    def refresh_adapters(self, loras=None, ip_adapter=None, *units):
        """Rescan models/Lora, models/IP-Adapter, models/ControlNet and the detector models;
        picks that vanished are dropped (typed hub ids stay). `units`: each ControlNet unit's
        model, then each unit's detector."""
        known = self.available_loras()
        picked = [name for name in (loras or []) if name in known]
        ips = self.adapter_models(IP_ADAPTER_SUBDIR)
        cns = self.adapter_models(CONTROLNET_SUBDIR)
        detectors = self.detector_models()
        names = {value for _, value in detectors}
        models, picked_detectors = units[:len(units) // 2], units[len(units) // 2:]
        return (gr.update(choices=known, value=picked),
                gr.update(choices=ips, value=ip_adapter or ""),
                *(gr.update(choices=cns, value=value or "") for value in models),
                *(gr.update(choices=detectors, value=value if value in names else "")
                  for value in picked_detectors))

    def preview_control(self, image, source, init_image, preprocessor="canny", detector="",
                        low=100, high=200, unit: int = 1):
        """The control map a ControlNet unit would follow: canny edges, or the depth / pose map
        its detector draws, or (preprocessor none) the picture itself."""
        try:
            P.make(controlnets=[{"model": "-", "preprocessor": preprocessor, "low": low,
                                 "high": high}])
        except P.ParamsError as exc:
            raise _fail(exc.field, str(exc), [unit]) from None
        detector = self._detector_name(detector, f"cn{unit}_detector")
        field = "init_image" if source == "init image" else f"cn{unit}_image"
        picture = init_image if source == "init image" else image
        if picture is None:
            where = "an init image" if source == "init image" else "a control image"
            raise _fail(field, f"nothing to preview yet: upload {where}")
        picture = self.load_image(picture, field)
        # Only a preview: a huge photo need not take seconds to trace.
        picture.thumbnail((1024, 1024))
        try:
            return self.engine.control_preview(picture, preprocessor, detector, float(low),
                                               float(high))
        except InputError as exc:
            # The engine names the input at fault: the unit's detector or its thresholds.
            raise _fail(f"cn{unit}_{exc.field}", str(exc)) from None

    # -- X/Y plot ----------------------------------------------------------------------------
    def xy_base(self, init_image=None, model=None, prompt=None, negative_prompt=None,
                strength=_D("strength"), guidance_scale=_D("guidance_scale"), steps=_D("steps"),
                seed=_D("seed"), scheduler=_D("scheduler"), width=0, height=0,
                resize_mode=_D("resize_mode"), batch_count=1, batch_size=1,
                **extras) -> tuple[Any, str]:
        """(init image, Markdown summary) of what an X/Y plot starts from: the img2img tab's
        picture and settings, so the artist sees them on the plot's tab. Never raises: a setting
        the plot would refuse is named in the summary (the plot's toast says it again)."""
        picture = None
        if init_image is not None:
            # A raw payload (the event skips gradio's preprocessing, which opens any path):
            # opened only if it is a file gradio holds, as every picture input is.
            try:
                picture = self.load_image(init_image, "init_image")
            except gr.Error:
                picture = None  # the plot itself names a bad picture
        try:
            p = self.build_params(model, prompt, negative_prompt, strength, guidance_scale, steps,
                                  seed, scheduler, width, height, resize_mode, 1, 1)
        except gr.Error as exc:
            return picture, f"**Not ready:** {exc.message}"
        size = (f"{p.width or '?'}×{p.height or '?'}" if p.width or p.height
                else "the init image's size")
        if picture is not None and not (p.width or p.height):
            size += f" ({picture.width}×{picture.height})"
        rows = [("Model", p.model), ("Prompt", p.prompt or "(empty)")]
        if p.negative_prompt:
            rows.append(("Negative prompt", p.negative_prompt))
        rows += [("Denoising strength", f"{p.strength:g}"), ("CFG scale", f"{p.guidance_scale:g}"),
                 ("Sampling steps", f"{p.steps} (effective {p.effective_steps})"),
                 ("Sampler", p.scheduler),
                 ("Seed", f"{p.seed}" + (" (one random seed for every cell)" if p.seed < 0
                                         else "")),
                 ("Size", size)]
        loras = [name for name in (extras.get("loras") or []) if isinstance(name, str)]
        if loras:
            weights = dict(_lora_rows(extras.get("lora_weights")))
            rows.append(("LoRAs", ", ".join(f"{name}:{weights.get(name, 1.0)}"
                                            for name in loras)))
        units = [f"unit {n}: {extras.get(f'cn{n}_model') or '(no model)'} (scale "
                 f"{extras.get(f'cn{n}_scale', 1.0)})" for n in range(1, CONTROLNET_UNITS + 1)
                 if extras.get(f"cn{n}_enabled") in (True, 1, "true", "True")]
        if units:
            rows.append(("ControlNet", "; ".join(units)))
        if "pag_scale" in extras:
            rows.append(("PAG scale", str(extras["pag_scale"])))
        table = "\n".join(["| base setting | value |", "|---|---|",
                           *(f"| {name} | {self._table_cell(str(value))} |"
                             for name, value in rows)])
        head = ("" if picture is not None else
                "**No init image yet:** upload one on the img2img tab.\n\n")
        return picture, head + table

    @staticmethod
    def _table_cell(text: str, limit: int = 200) -> str:
        """A value fit for one Markdown table cell: one line, no column breaks, not too long."""
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= limit else text[:limit - 1] + "…"

    def xy_start(self, *args, **extras) -> tuple:
        """The page's first step of a plot: the base settings shown again and the last plot's
        status, preview, grid and file cleared, so a plot that then fails never leaves an
        earlier 'Done' in view."""
        return (*self.xy_base(*args, **extras), "⏳ Starting the plot…", None, None, "")

    # The page's API lists xy_start's inputs by name, as it does xy_base's.
    xy_start.__signature__ = inspect.signature(xy_base)

    @staticmethod
    def xy_failed(status: str | None) -> str:
        """The status after a plot failed: a failure inside the plot already says what went
        wrong; one refused before it started points at the message it raised."""
        if (status or "").startswith("**Failed**"):
            return status
        return "**Failed**: the plot did not start; the message says which setting to fix."

    def _xy_plan(self, base: P.GenerationParams, axes: tuple):
        """The plot's plan (webui.xyplot.Plan) from the page's axes; gr.Error naming the axis."""

        try:
            grid_plan = xyplot.plan(*axes[:4], base, *axes[4:])
        except xyplot.AxisError as exc:
            raise _error(str(exc), title=exc.field) from None
        for axis in grid_plan.axes:
            if axis.kind != "prompt_sr":
                continue
            # A replacement may bring in a <lora:...> tag: the same check as a typed prompt.
            for index in range(len(axis.values)):
                try:
                    self._check_prompt_loras(axis.apply(base, index).prompt)
                except gr.Error as exc:
                    raise _error(f"{axis.which} values (Prompt S/R): {exc.message}",
                                 title=f"{axis.which} values") from None
        return grid_plan

    @_keyword_extras
    def xy_plot(self, session: Session, init_image, reference_image=None, model=None,
                prompt=None, negative_prompt=None, strength=_D("strength"),
                guidance_scale=_D("guidance_scale"), steps=_D("steps"), seed=_D("seed"),
                scheduler=_D("scheduler"), width=0, height=0, resize_mode=_D("resize_mode"),
                batch_count=1, batch_size=1, x_axis=_AXES[0], x_values=xy.default_values(_AXES[0]),
                y_axis=_AXES[1], y_values=xy.default_values(_AXES[1]), z_axis=xy.NOTHING,
                z_values="", request: gr.Request = None, **extras) -> Iterator[XYView]:
        """The same seed over a grid of two settings, rendered as one labelled image, or with a
        Z axis one grid per Z value; every other setting (adapters, inpainting) as on the
        img2img tab. Every value is checked before the first cell runs; a cell that fails fails
        the plot (the status says so, the error is raised). The plot itself is
        webui.xyplot.run; this turns the page's values into its request and its events into
        the page's views."""

        del batch_count, batch_size  # one image per cell, whatever the main tab says
        session = session if session is not None else Session()
        # A grid of latent previews compares nothing: cells are always pictures.
        extras = {**extras, "output_type": "image"}
        base, init, inputs = self._request(
            init_image, reference_image,
            (model, prompt, negative_prompt, strength, guidance_scale, steps, seed, scheduler,
             width, height, resize_mode, 1, 1), extras, [])
        grid_plan = self._xy_plan(base, (x_axis, x_values, y_axis, y_values, z_axis, z_values))
        owner = _user(request)
        # A request, as _submit makes one: the engine confines every name in it to the models
        # folder, behind the page's own checks.
        job = JobRequest(base, init, mask=inputs.mask, ip_image=inputs.ip_image,
                         control_images=inputs.control_images, latents=inputs.latents,
                         color_reference=inputs.color_reference,
                         infotext_extra=inputs.infotext_extra, save=False, owner=owner)
        skip = gr.skip()
        session.start()
        events = xyplot.run(self.engine, grid_plan, job, stopped=lambda: session.interrupted,
                            track=session.track, forget=session.forget, collect=self._result,
                            interval=UPDATE_INTERVAL)
        try:
            for event in events:
                if isinstance(event, xyplot.Started):
                    yield XYView(event.text, skip, None, "")
                elif isinstance(event, xyplot.CellProgress):
                    preview = event.preview if event.preview is not None else skip
                    yield XYView(f"{event.where} · {describe(event.progress)}", preview, skip,
                                 skip)
                elif isinstance(event, xyplot.Finished):
                    finished = event
        except xyplot.CellFailed as exc:
            error = self._xy_error(exc.error)
            if error is None:
                raise exc.error from None
            # One failed cell fails the plot: a grid with a hole compares nothing.
            yield XYView(f"**Failed** at {exc.where[0].lower()}{exc.where[1:]}: "
                         f"{error.message}", skip, None, "")
            raise error from None
        if not finished.grids:
            yield XYView(f"{grid_plan.name} interrupted before the first cell was ready.", skip,
                         skip, skip)
            return
        if finished.interrupted:
            several = "grids" if grid_plan.grids > 1 else "grid"
            yield XYView(f"**Interrupted**: {finished.done}/{grid_plan.cells} cells done, "
                         f"{several} not saved.", skip, finished.shown, "")
            return
        paths = xyplot.save(finished.grids, self.engine.outputs_dir, owner=owner)
        names = ", ".join(path.name for path in paths)
        yield XYView(f"**Done**: {finished.summary}.", skip, finished.shown, f"saved as {names}")

    def _xy_error(self, error: BaseException) -> gr.Error | None:
        """The toast for a failed cell, as for a single job: an error reading its result is one
        already (xy_plot collects with _result); one queueing it is mapped as _submit maps it.
        None for anything else, which goes up as it is."""
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, QueueFull):
            return _error(str(error), title="Busy")
        if isinstance(error, (InputError, AdapterError)):
            return _fail(error.field, self._unplaced(str(error)))
        return None
