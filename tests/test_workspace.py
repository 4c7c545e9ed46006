"""The studio as a workspace, at the handler level: a second Generate while a job runs is refused
with a message, a failure keeps the previous results and says so in the status line, the live
preview is cleared when the result arrives, the History view, the settings the browser remembers
(checked, since the browser's storage is the client's), and deleting a preset asks first."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import pytest

from webui import params as P
from webui.engine.core import Engine
from webui.presets import PresetStore
from webui.ui import handlers
from webui.ui.handlers import GenerateView, Session, Studio
from webui.ui.presets_panel import KEEP, PresetActions

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("workspace")
    return Studio(Engine(models_dir=base / "models", outputs_dir=base / "outputs",
                         model="tiny-random"))


def run(studio, session, init, **settings) -> list[GenerateView]:
    return list(studio.generate(session, init, **{"steps": 2, **settings}))


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


# -- Generate while a job runs -------------------------------------------------------------------
def test_second_generate_while_running_is_refused_with_a_message(studio, make_image):
    session = Session()
    assert studio.claim(session)["value"].startswith("Generating")
    # Pressed again before the first job reached the engine: refused, not dropped in silence.
    with pytest.raises(gr.Error, match="still running"):
        studio.claim(session)
    views = studio.generate(session, make_image(96, 64), steps=30)
    next(views)  # the job is queued or running now
    with pytest.raises(gr.Error, match="Interrupt"):
        studio.claim(session)
    session.cancel()
    list(views)
    assert studio.release(session)["value"] == "Generate"
    assert not session.busy
    assert studio.claim(session)["value"].startswith("Generating")  # free again
    studio.release(session)


def test_a_claim_whose_job_never_came_frees_the_tab(studio, monkeypatch):
    session = Session()
    studio.claim(session)
    clock = time.monotonic() + handlers.CLAIM_WINDOW + 1
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock)
    assert not session.busy


def test_other_tabs_are_not_blocked(studio):
    mine, theirs = Session(), Session()
    studio.claim(mine)
    assert studio.claim(theirs)["value"].startswith("Generating")


# -- results, preview and failures ---------------------------------------------------------------
def test_result_clears_the_preview_and_a_failure_keeps_the_results(studio, make_image):
    session = Session()
    done = run(studio, session, make_image(96, 64))
    assert done[-1].preview is None, "the live preview must give way to the result"
    assert "Done" in done[-1].status
    shown = list(session.results)
    views = []
    with pytest.raises(gr.Error, match="Sampling steps"):
        for view in studio.generate(session, make_image(96, 64), steps=0):
            views.append(view)
    failed = views[-1]
    assert failed.status.startswith("**Failed**") and "Sampling steps" in failed.status
    assert failed.preview is None
    # The gallery and the result's details are left as they were.
    assert all(is_skip(part) for part in (failed.gallery, failed.compare, failed.infotext,
                                          failed.path))
    assert session.results == shown and not session.busy


# -- History -------------------------------------------------------------------------------------
def test_history_lists_results_newest_first_and_restores(studio, make_image):
    session = Session()
    run(studio, session, make_image(96, 64), seed=11)
    run(studio, session, make_image(64, 128), seed=22, batch_size=2)
    captions = [caption for _, caption in studio.history(session)]
    assert captions == ["seed 23", "seed 22", "seed 11"]
    text = studio.select_history(session, SimpleNamespace(index=2))
    assert "Seed: 11" in text
    image, tab = studio.history_to_init(session)
    assert image.size == (96, 64)
    assert tab.selected == "img2img"
    # Restoring goes through Send to img2img: the picked result's settings fill the page.
    filled = dict(zip(handlers.FILL_FIELDS, studio.send_to_img2img(text)))
    assert filled["seed"] == 11 and filled["steps"] == 2
    assert studio.select_history(session, SimpleNamespace(index=99)) == ""


def test_history_is_bounded_and_needs_a_pick(studio):
    session = Session()
    with pytest.raises(gr.Error, match="Pick a result"):
        studio.history_to_init(session)
    item = SimpleNamespace(image=None, seed=1, infotext="")
    for _ in range(handlers.HISTORY_LIMIT + 5):
        session.remember([item])
    assert len(session.history) == handlers.HISTORY_LIMIT


# -- browser memory ------------------------------------------------------------------------------
def test_remembered_settings_round_trip(studio):
    values = ["tiny-random", "a fox", "blurry", 0.4, 9.0, 35, 1234, "DPM++ 2M Karras", 512, 768,
              "crop and resize", 2, 3]
    stored = studio.remember_settings(*values)
    assert set(stored) == set(handlers.REMEMBERED)
    assert list(studio.recall_settings(stored)) == values


@pytest.mark.parametrize("stored", [
    None, "not a dict", [1, 2], {"strength": 7}, {"steps": "many"}, {"scheduler": "Warp drive"},
    {"model": "../../etc/passwd"}, {"width": 100000}, {"width": True}, {"height": -8},
    {"prompt": "x" * 30_000}, {"seed": float("nan")},
])
def test_bad_remembered_values_are_left_at_the_page_default(studio, stored):
    recalled = studio.recall_settings(stored)
    assert len(recalled) == len(handlers.REMEMBERED)
    assert all(is_skip(value) for value in recalled)


def test_partly_valid_memory_keeps_the_valid_part(studio):
    recalled = dict(zip(handlers.REMEMBERED,
                        studio.recall_settings({"prompt": "a fox", "strength": 3})))
    assert recalled["prompt"] == "a fox" and is_skip(recalled["strength"])


# -- presets: delete asks first ------------------------------------------------------------------
def test_preset_delete_asks_before_anything_is_removed(tmp_path):
    store = PresetStore(user_dir=tmp_path / "user-presets")
    actions = PresetActions(store, list(P.GenerationParams.model_fields))
    actions.save_as("Gone soon", None, {"strength": 0.3})
    asked = actions.ask_delete("Gone soon")
    assert asked.asking["visible"] is True and "cannot be undone" in asked.status
    assert "Gone soon" in [p.name for p in store.list().presets], "asking deleted it"
    kept = actions.keep("Gone soon")
    assert kept.asking["visible"] is False and "Kept" in kept.status
    deleted = actions.delete("Gone soon", None)
    assert deleted.asking["visible"] is False
    assert "Gone soon" not in [p.name for p in store.list().presets]
    shipped = next(p.name for p in store.list().presets if p.shipped)
    with pytest.raises(gr.Error, match="shipped preset"):
        actions.ask_delete(shipped)
    with pytest.raises(gr.Error, match="Pick a preset"):
        actions.ask_delete("  ")
    assert actions.ask_delete("Gone soon").asking is not KEEP  # a file's name is enough


def test_interrupt_between_jobs_of_a_run_is_acknowledged(studio):
    session = Session()
    assert studio.interrupt(session) == "Nothing of yours is running."
    studio.claim(session)  # a run holds the tab between two of its jobs (loopback passes)
    assert studio.interrupt(session).startswith("Interrupting")
    assert session.interrupted
