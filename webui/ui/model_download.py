"""The "Get a model" panel under the model picker: a first real model in two clicks.

A short list of well-known checkpoints (or any hub id typed in), a Download button, and a status
line that follows the download ("1.2 GB of 2.0 GB · 35 MB/s") beside a progress bar. When the
download is done the picker lists the model and selects it. The downloading itself is
webui/engine/hub.py's; this module only places the controls and drives them.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from .. import engine as E  # the engine's public face: suggestions, id check, download
from ..engine import Cancelled, InputError, ModelError
from .handlers import Studio

log = logging.getLogger(__name__)
# The page's own queue for downloads: one at a time, and never behind (or in front of) the
# generation jobs, which have the "gpu" queue.
CONCURRENCY_ID = "model-download"


@dataclass
class Panel:
    accordion: gr.Accordion
    suggestion: gr.Dropdown
    repo_id: gr.Textbox
    download: gr.Button
    status: gr.Markdown


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def describe(progress: E.DownloadProgress) -> str:
    """'1.2 GB of 2.0 GB · 35.0 MB/s'."""
    return f"{_size(progress.done)} of {_size(progress.total)} · {_size(progress.speed)}/s"


def build(studio: Studio) -> Panel:
    """The panel, placed where it is called. It starts closed, so the header stays one line
    and the workspace below stays in view; while the built-in tiny models are all the picker
    has, the tiny-model notice beside it points here."""
    offline = E.is_offline()
    refused = refusal(studio)
    with gr.Accordion("Get a model", open=False, elem_id="get-model") as accordion:
        suggestion = gr.Dropdown([(s.label, s.repo_id) for s in E.SUGGESTIONS],
                                 value=E.SUGGESTIONS[0].repo_id, label="Well-known checkpoints",
                                 info="id · family · download size · licence",
                                 elem_id="get-model-choice")
        repo_id = gr.Textbox(label="Or any hub id", placeholder="owner/name (diffusers format)",
                             max_lines=1, elem_id="get-model-id")
        download = gr.Button("Download", variant="secondary",
                             interactive=not (offline or refused), elem_id="get-model-download")
        status = gr.Markdown(refused or (E.offline_message() if offline else
                                         "Downloads go to the hub cache; only safetensors "
                                         "weights are fetched."), elem_id="get-model-status")
    return Panel(accordion, suggestion, repo_id, download, status)


def refusal(studio: Studio) -> str:
    """Why this studio downloads nothing for its visitors ("" when it does)."""
    if studio.engine.allow_downloads:
        return ""
    return ("This shared studio does not download models for its visitors; its owner can "
            "allow it with --allow-downloads, or put checkpoints in the models folder.")


def download_model(studio: Studio, suggestion: str | None, typed: str | None,
                   progress=gr.Progress()) -> Iterator[tuple]:
    """The Download event: yields (status, picker, tiny notice) while the download runs, and
    at the end lists and selects the new model. A typed id wins over the list's choice."""
    # Refused here too, not only by the disabled button: the event is callable by its API name.
    if refused := refusal(studio):
        yield f"**Not downloaded:** {refused}", gr.skip(), gr.skip()
        return
    try:
        repo_id = E.check_repo_id((typed or "").strip() or suggestion or "")
    except InputError as exc:
        yield f"**Not downloaded:** {exc}", gr.skip(), gr.skip()
        return
    updates: queue.Queue = queue.Queue()
    cancel = threading.Event()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["folder"] = E.download(repo_id, on_progress=updates.put, cancel=cancel)
        except (ModelError, Cancelled) as exc:
            outcome["error"] = exc
        except Exception as exc:  # noqa: BLE001 - a full disk, say: the page shows why it stopped
            log.exception("download of %s failed", repo_id)
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=run, name=f"download {repo_id}", daemon=True)
    thread.start()
    yield f"Downloading **{repo_id}**…", gr.skip(), gr.skip()
    try:
        while (item := updates.get()) is not None:
            if item.total:
                progress((item.done, item.total), desc=f"{repo_id}: {describe(item)}",
                         unit="bytes")
            yield f"Downloading **{repo_id}**: {describe(item)}", gr.skip(), gr.skip()
    finally:
        # Whatever ended the loop (the page closed, the event cancelled), the download stops
        # with it; after a finished download this changes nothing.
        cancel.set()
    if "error" in outcome:
        yield f"**Download of {repo_id} failed:** {outcome['error']}", gr.skip(), gr.skip()
        return
    picker = gr.update(choices=studio.model_choices(), value=repo_id)
    yield (f"**{repo_id}** is downloaded and selected.", picker,
           gr.update(visible=studio.engine.is_tiny(repo_id)))


def wire(studio: Studio, panel: Panel, model_dropdown: gr.Dropdown,
         tiny_notice_md: gr.Markdown) -> None:
    """Connect Download; and label the picker's models with their licences from the start."""
    # The picker is built (in app.py) from the plain names; its labels are set here, before
    # the page is rendered, so the licences show without a first press of 🔄.
    model_dropdown.choices = studio.model_choices()

    def on_download(suggestion, typed, progress=gr.Progress()):
        yield from download_model(studio, suggestion, typed, progress)

    panel.download.click(
        on_download, [panel.suggestion, panel.repo_id],
        [panel.status, model_dropdown, tiny_notice_md],
        api_name="download_model", concurrency_id=CONCURRENCY_ID, concurrency_limit=1,
        show_progress="full", show_progress_on=[panel.status])
