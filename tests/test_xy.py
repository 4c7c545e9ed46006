"""The X/Y(/Z) plot: axis parsing and validation, the rendered grids, the saved PNG with every
cell's infotext, the handler's runs (Z grids, prompt search/replace, seeds, LoRA and ControlNet
weights), a failing cell failing the whole plot, and the model loaded once per plot."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from webui import infotext, xyplot
from webui import params as P
from webui.engine import core
from webui.engine import JobRequest, Progress
from webui.engine.core import Engine
from webui.ui import xy
from webui.ui.handlers import Session, Studio, XYView

# gr.Warning outside a request falls back to a Python warning; the handlers use it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")
# Fast cells: two denoising steps, no PAG (it doubles the UNet calls) unless a test asks for it.
FAST = dict(steps=4, strength=0.5, pag_scale=0.0)


def break_cells_with_cfg(engine, monkeypatch, cfg: float) -> None:
    """Make every job with CFG `cfg` fail inside the engine, as a broken sampler would."""
    real = engine._run

    def run(job):
        if job.params.guidance_scale == cfg:
            raise RuntimeError("the sampler broke")
        return real(job)

    monkeypatch.setattr(engine, "_run", run)


@pytest.fixture
def studio(engine):
    return Studio(engine)


def views_until_error(plot) -> tuple[list[XYView], gr.Error | None]:
    """Every view a plot yields, and the error it ended with (None when it finished)."""
    views: list[XYView] = []
    try:
        for view in plot:
            views.append(view)
    except gr.Error as exc:
        return views, exc
    return views, None


def saved_grids(engine, final: XYView) -> list[Path]:
    names = final.path.removeprefix("saved as ").split(", ")
    return [next(Path(engine.outputs_dir).rglob(name)) for name in names]


# -- plans ---------------------------------------------------------------------------------------
def test_plan_validation():
    base = P.GenerationParams()
    plan = xyplot.plan("Denoising strength", xy.default_values("Denoising strength"),
                       "CFG scale", xy.default_values("CFG scale"), base)
    assert plan.x_values == [0.3, 0.5, 0.7] and plan.y_values == [5.0, 7.0, 10.0]
    assert plan.params_for(base, 2, 0).strength == 0.7
    assert plan.z is None and plan.grids == 1 and plan.name == "X/Y plot"
    samplers = xyplot.parse_axis("Sampler", "euler a, DPMSolverMultistepScheduler", base)
    assert samplers.values == ["Euler a", "DPM++ 2M"]
    with pytest.raises(xyplot.AxisError,
                       match=r"^X values \(Steps\): steps must be a whole number"):
        xyplot.plan("Steps", "10, 1000", "CFG scale", "7", base)
    with pytest.raises(xyplot.AxisError, match="both CFG scale"):
        xyplot.plan("CFG scale", "5", "CFG scale", "7", base)
    with pytest.raises(xyplot.AxisError, match=r"7 x 6 = 42 cells is too many.*at most 36"):
        xyplot.plan("Steps", "1,2,3,4,5,6,7", "CFG scale", "1,2,3,4,5,6", base)
    with pytest.raises(xyplot.AxisError, match="Y values: type"):
        xyplot.plan("Steps", "1", "CFG scale", " , ", base)
    with pytest.raises(xyplot.AxisError, match="X axis must be one of") as caught:
        xyplot.plan("Hires steps", "1", "CFG scale", "7", base)
    assert caught.value.field == "X axis"
    for label in xyplot.AXES:
        assert isinstance(xy.default_values(label), str)
    assert xy.default_values(xyplot.NOTHING) == ""


def test_a_draft_axis_compares_draft_settings():
    base = P.GenerationParams()
    plan = xyplot.plan("Draft", "0, 2", "Steps", "4", base)
    assert plan.x_values == [0, 2] and plan.params_for(base, 1, 0).draft == 2
    with pytest.raises(xyplot.AxisError, match=r"X values \(Draft\): draft must be a whole "
                       r"number from 0 to 4"):
        xyplot.plan("Draft", "0, 5", "Steps", "4", base)


def test_seed_and_pag_axes():
    base = P.GenerationParams()
    plan = xyplot.plan("Seed", "7, 8, 7", "PAG scale", "0, 1.5", base)
    assert plan.x_values == [7, 8] and plan.y_values == [0.0, 1.5]
    cell = plan.params_for(base, 1, 1)
    assert (cell.seed, cell.pag_scale) == (8, 1.5)
    with pytest.raises(xyplot.AxisError, match=r"X values \(Seed\): -1 .* no place on a seed axis"):
        xyplot.plan("Seed", "1, -1", "CFG scale", "7", base)
    with pytest.raises(xyplot.AxisError, match=r"X values \(Seed\): seed must be a whole number"):
        xyplot.plan("Seed", "1.5", "CFG scale", "7", base)
    with pytest.raises(xyplot.AxisError, match=r"Y values \(PAG scale\): pag_scale must be a "
                       r"number from 0 to 10"):
        xyplot.plan("Seed", "1", "PAG scale", "11", base)


def test_prompt_search_replace_axis():
    base = P.GenerationParams(prompt="a red fox, red sky")
    axis = xyplot.parse_axis("Prompt S/R", 'red, "deep, blue", green', base)
    assert axis.search == "red" and axis.values == ["red", "deep, blue", "green"]
    assert axis.labels == ["red", "deep, blue", "green"]
    assert axis.title == "Prompt S/R (red)"
    assert axis.apply(base, 1).prompt == "a deep, blue fox, deep, blue sky"
    assert axis.apply(base, 0).prompt == base.prompt
    # Typed back the way it reads: the value holding a comma stays quoted.
    assert axis.describe() == 'Prompt S/R (red) (red, "deep, blue", green)'
    assert xyplot.split_values(axis.describe().split("(red) (")[1][:-1]) == axis.values
    with pytest.raises(xyplot.AxisError, match=r"X values \(Prompt S/R\): 'blue' is not in the "
                       "prompt; the first value is the text to search for"):
        xyplot.parse_axis("Prompt S/R", "blue, green", base)
    with pytest.raises(xyplot.AxisError, match=r"X values: type Prompt S/R values .* e\.g\. red"):
        xyplot.parse_axis("Prompt S/R", "", base)
    long = P.GenerationParams(prompt="x" * 19_990 + " cat")
    with pytest.raises(xyplot.AxisError, match=r"Y values \(Prompt S/R\): prompt is too long"):
        xyplot.plan("Steps", "10", "Prompt S/R", "cat, " + "tiger" * 10, long)


def test_lora_and_controlnet_weight_axes():
    plain = P.GenerationParams()
    with pytest.raises(xyplot.AxisError,
                       match=r"X axis \(LoRA weight\): no LoRA is picked") as caught:
        xyplot.plan("LoRA weight", "0, 1", "CFG scale", "7", plain)
    assert caught.value.field == "X axis"
    with pytest.raises(xyplot.AxisError, match=r"Y axis \(ControlNet weight\): no ControlNet "
                       "unit is enabled"):
        xyplot.plan("Steps", "10", "ControlNet weight", "0.5", plain)
    base = plain.replace(loras=[{"name": "film", "weight": 0.8}, {"name": "grain", "weight": 1}],
                         controlnets=[{"model": "cn/tiny-canny", "scale": 1.0},
                                      {"model": "other", "scale": 0.3}])
    plan = xyplot.plan("LoRA weight", "0, 0.5", "ControlNet weight", "0.25, 2", base)
    assert plan.x.title == "LoRA weight (film)" and plan.y.title == "ControlNet weight (tiny-canny)"
    cell = plan.params_for(base, 1, 0)
    assert [(l.name, l.weight) for l in cell.loras] == [("film", 0.5), ("grain", 1.0)]
    assert [u.scale for u in cell.controlnets] == [0.25, 0.3]
    with pytest.raises(xyplot.AxisError, match=r"X values \(LoRA weight\): must be a number "
                       "from -4 to 4"):
        xyplot.plan("LoRA weight", "0, 9", "CFG scale", "7", base)
    with pytest.raises(xyplot.AxisError, match=r"Y values \(ControlNet weight\): must be a number "
                       "from 0 to 2"):
        xyplot.plan("Steps", "10", "ControlNet weight", "3", base)


def test_z_axis_plan():
    base = P.GenerationParams(prompt="a red fox")
    plan = xyplot.plan("Steps", "10, 20", "CFG scale", "5, 7", base, "Prompt S/R",
                       "red, blue, green")
    assert plan.grids == 3 and plan.cells == 12 and plan.name == "X/Y/Z plot"
    cell = plan.params_for(base, 1, 0, 2)
    assert (cell.steps, cell.guidance_scale, cell.prompt) == (20, 5.0, "a green fox")
    assert plan.grid_params(base, 1).prompt == "a blue fox"
    assert plan.extra(1) == {"X/Y plot": "Steps (10, 20) x CFG scale (5, 7)",
                             "Z axis": "Prompt S/R (red): blue"}
    # Nothing (or no Z at all) is a plain X/Y plot.
    assert xyplot.plan("Steps", "10", "CFG scale", "5", base, xyplot.NOTHING, "1, 2").z is None
    with pytest.raises(xyplot.AxisError, match="X and Z are both Steps") as caught:
        xyplot.plan("Steps", "10", "CFG scale", "5", base, "Steps", "20")
    assert caught.value.field == "Z axis"
    with pytest.raises(xyplot.AxisError, match=r"Z values \(Seed\)"):
        xyplot.plan("Steps", "10", "CFG scale", "5", base, "Seed", "-1")
    # The limit counts the cells of every grid.
    with pytest.raises(xyplot.AxisError, match=r"3 x 3 x 5 = 45 cells is too many.*at most 36"):
        xyplot.plan("Steps", "1,2,3", "CFG scale", "1,2,3", base, "Seed", "1,2,3,4,5")


# -- pictures ------------------------------------------------------------------------------------
def test_grid_size_and_labels():
    cells = [[Image.new("RGB", (64, 48), (40 * x, 40 * y, 90)) for x in range(3)]
             for y in range(2)]
    cells[1][2] = None  # an interrupted plot keeps its shape
    grid = xyplot.render(cells, "Sampler", ["Euler a", "DPM++ 2M Karras", "DDIM"], "CFG scale",
                         [5.0, 7.5])
    assert grid.labels == ["Euler a", "DPM++ 2M Karras", "DDIM", "5", "7.5"]
    assert grid.titles == ("Sampler", "CFG scale")
    width, height = grid.image.size
    assert width > 3 * 64 and height > 2 * 48
    # The labels live in a narrow header, not in extra rows.
    assert height - 2 * 48 < 2 * 48
    big = [[Image.new("RGB", (2048, 2048))]]
    assert max(xyplot.render(big, "Steps", [10], "CFG scale", [7]).image.size) < 2048
    # A Z value heads its grid: one more line, no more.
    titled = xyplot.render(cells, "Sampler", ["Euler a", "DPM++ 2M Karras", "DDIM"],
                           "CFG scale", [5.0, 7.5], title="Seed: 3")
    assert titled.title == "Seed: 3"
    assert height < titled.image.height < height + 48
    # Long replacements are cut short in the picture (the infotext keeps them).
    long = xyplot.render([[cells[0][0]]], "Prompt S/R", ["x" * 500], "Steps", [10])
    assert long.labels[0].endswith("…") and len(long.labels[0]) == xyplot.MAX_LABEL
    stacked = xyplot.stack([grid.image, titled.image])
    assert stacked.width == max(grid.image.width, titled.image.width)
    assert stacked.height > grid.image.height + titled.image.height
    assert xyplot.stack([grid.image]) is grid.image


def test_grid_png_holds_every_cell_infotext():
    base = P.GenerationParams(prompt="a fox")
    plan = xyplot.plan("Steps", "10, 20", "CFG scale", "5", base, "Seed", "1, 2")
    records = [xyplot.cell_record(plan, xi, 0, zi, f"a fox\nSteps: {10 * (xi + 1)}, Seed: {zi + 1}")
               for zi in range(2) for xi in range(2)]
    data = xyplot.png_bytes(Image.new("RGB", (8, 8)), "a fox\nSteps: 10, X/Y plot: x", records)
    import io

    image = Image.open(io.BytesIO(data))
    assert image.info["parameters"] == "a fox\nSteps: 10, X/Y plot: x"
    assert xyplot.read_cells(image) == records
    assert records[3] == {"x": "20", "y": "5", "z": "2", "parameters": "a fox\nSteps: 20, Seed: 2"}
    assert xyplot.read_cells(Image.new("RGB", (8, 8))) == []
    # A hostile PNG's cells chunk nested deeper than the decoder recurses: no cells, no error.
    hostile = Image.new("RGB", (8, 8))
    hostile.info[xyplot.CELLS_KEY] = "[" * 5000 + "]" * 5000
    assert xyplot.read_cells(hostile) == []


# -- the runner, without the studio --------------------------------------------------------------
def test_the_plot_module_imports_neither_gradio_nor_torch():
    import subprocess
    import sys

    code = ("import sys, webui.xyplot\n"
            "bad = [m for m in ('gradio', 'torch', 'diffusers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_runner_on_the_engine(engine, init):
    base = P.GenerationParams(prompt="a fox", seed=-1, **FAST)
    grid_plan = xyplot.plan("CFG scale", "5, 9", "Steps", "4", base)
    tracked, forgotten = [], []
    events = list(xyplot.run(engine, grid_plan, JobRequest(base, init), track=tracked.append,
                             forget=forgotten.append))
    started, finished = events[0], events[-1]
    assert isinstance(started, xyplot.Started) and isinstance(finished, xyplot.Finished)
    seed = started.base.seed
    assert seed >= 0 and finished.base.seed == seed  # one random seed for every cell
    assert started.text == f"X/Y plot: 2 cells, seed {seed}"
    progress = [e for e in events if isinstance(e, xyplot.CellProgress)]
    assert progress and {e.cell for e in progress} == {1, 2}
    assert progress[0].where == "Cell 1/2 (CFG scale 5, Steps 4)"
    assert isinstance(progress[0].progress, Progress)
    done = [e for e in events if isinstance(e, xyplot.CellDone)]
    assert [e.where for e in done] == ["Cell 1/2 (CFG scale 5, Steps 4)",
                                       "Cell 2/2 (CFG scale 9, Steps 4)"]
    assert tracked == forgotten and len(tracked) == 2 and all(job.done for job in tracked)
    assert not finished.interrupted and finished.done == 2
    assert finished.summary == f"2 cells, seed {seed}"
    [grid] = finished.grids
    assert grid.seed == seed
    assert infotext.parse(grid.parameters).extras["X/Y plot"] == "CFG scale (5, 9) x Steps (4)"
    assert [infotext.parse(c["parameters"]).params.guidance_scale for c in grid.cells] == [5, 9]
    assert xyplot.read_cells(finished.shown) == grid.cells
    # The cells are never saved on their own; the grid is, numbered in the grids folder.
    assert not Path(engine.outputs_dir).exists()
    first, second = (xyplot.save(finished.grids, engine.outputs_dir)[0] for _ in range(2))
    assert first.parent.parent.name == xyplot.GRIDS_SUBDIR
    assert (first.name, second.name) == (f"00000-{seed}.png", f"00001-{seed}.png")
    saved = Image.open(first)
    assert saved.info["parameters"] == grid.parameters
    assert xyplot.read_cells(saved) == grid.cells


def test_runner_stops_and_fails(engine, init, monkeypatch):
    base = P.GenerationParams(seed=6, **FAST)
    grid_plan = xyplot.plan("CFG scale", "5, 9, 11", "Steps", "4", base)
    # Stopped after the first cell: a grid with grey holes, marked interrupted.
    events = []
    for event in xyplot.run(engine, grid_plan, JobRequest(base, init),
                            stopped=lambda: any(isinstance(e, xyplot.CellDone) for e in events)):
        events.append(event)
    finished = events[-1]
    assert finished.interrupted and finished.done == 1 and len(finished.grids) == 1
    assert len(finished.grids[0].cells) == 1
    # Stopped before the first: nothing to show.
    [started, nothing] = list(xyplot.run(engine, grid_plan, JobRequest(base, init),
                                         stopped=lambda: True))
    assert nothing.interrupted and nothing.grids == [] and nothing.shown is None
    # A failing cell fails the plot, naming where; nothing runs after it.
    break_cells_with_cfg(engine, monkeypatch, 9)
    seen = []
    with pytest.raises(xyplot.CellFailed) as caught:
        for event in xyplot.run(engine, grid_plan, JobRequest(base, init)):
            seen.append(event)
    assert caught.value.where == "Cell 2/3 (CFG scale 9, Steps 4)"
    assert isinstance(caught.value.error, RuntimeError)
    assert str(caught.value) == "cell 2/3 (CFG scale 9, Steps 4): the sampler broke"
    assert not any(isinstance(e, xyplot.Finished) for e in seen)
    assert not any(getattr(e, "cell", 0) == 3 for e in seen)
    assert not Path(engine.outputs_dir).exists()


# -- the handler ---------------------------------------------------------------------------------
def test_xy_plot_handler(studio, init, engine):
    session = Session()
    views = list(studio.xy_plot(session, init, seed=-1, x_axis="Denoising strength",
                                x_values="0.3, 0.6", y_axis="CFG scale", y_values="5, 9",
                                **FAST))
    assert all(isinstance(v, XYView) for v in views)
    assert views[0].grid is None and views[0].path == ""  # the last plot's grid is cleared
    assert any(v.status.startswith("Cell 1/4") for v in views)
    final = views[-1]
    assert final.status.startswith("**Done**: 4 cells, seed ")
    grid = final.grid
    assert grid.width > 2 * 64 and grid.height > 2 * 64
    [path] = saved_grids(engine, final)
    saved = Image.open(path)
    assert saved.size == grid.size
    assert infotext.parse(saved.info["parameters"]).extras["X/Y plot"] == \
        "Denoising strength (0.3, 0.6) x CFG scale (5, 9)"
    assert path.parent.parent.name == xyplot.GRIDS_SUBDIR
    # Every cell's own infotext, read back from the saved file, in row order (Y, then X).
    cells = xyplot.read_cells(saved)
    assert [(c["x"], c["y"]) for c in cells] == [("0.3", "5"), ("0.6", "5"), ("0.3", "9"),
                                                 ("0.6", "9")]
    read = [infotext.parse(c["parameters"]).params for c in cells]
    assert [(p.strength, p.guidance_scale) for p in read] == [(0.3, 5), (0.6, 5), (0.3, 9),
                                                              (0.6, 9)]
    assert len({p.seed for p in read}) == 1 and read[0].seed >= 0
    # The page's copy carries the same text.
    assert xyplot.read_cells(grid) == cells
    with pytest.raises(gr.Error, match="too many"):
        next(studio.xy_plot(Session(), init, x_axis="Steps",
                            x_values=",".join(map(str, range(1, 8))), y_axis="CFG scale",
                            y_values="1,2,3,4,5,6"))


def test_z_axis_makes_one_saved_grid_per_value(studio, init, engine):
    views = list(studio.xy_plot(Session(), init, seed=5, x_axis="CFG scale", x_values="5, 9",
                                y_axis="Sampler", y_values="Euler a", z_axis="Denoising strength",
                                z_values="0.3, 0.6", **FAST))
    assert views[0].status == "X/Y/Z plot: 4 cells in 2 grids, seed 5"
    assert any("Denoising strength 0.6" in v.status for v in views if v.status.startswith("Cell 4"))
    final = views[-1]
    assert final.status == "**Done**: 4 cells in 2 grids, seed 5."
    paths = saved_grids(engine, final)
    assert len(paths) == 2 and all(p.name.endswith("-5.png") for p in paths)
    grids = [Image.open(p) for p in paths]
    # The page shows both, one under the other.
    assert final.grid.height > sum(g.height for g in grids)
    for grid, strength in zip(grids, (0.3, 0.6)):
        text = grid.info["parameters"]
        assert infotext.parse(text).extras["Z axis"] == f"Denoising strength: {strength:g}"
        assert infotext.parse(text).params.strength == strength
        cells = xyplot.read_cells(grid)
        assert [c["z"] for c in cells] == [f"{strength:g}"] * 2
        assert [infotext.parse(c["parameters"]).params.guidance_scale for c in cells] == [5, 9]
    assert len(xyplot.read_cells(final.grid)) == 4


def test_prompt_search_replace_and_seed_axes_run(studio, init, engine):
    views = list(studio.xy_plot(Session(), init, prompt="a red fox", x_axis="Prompt S/R",
                                x_values='red, "blue, bright"', y_axis="Seed", y_values="3, 4",
                                **FAST))
    final = views[-1]
    assert final.status == "**Done**: 4 cells, seed on the Y axis."
    [path] = saved_grids(engine, final)
    cells = xyplot.read_cells(Image.open(path))
    assert [c["x"] for c in cells] == ["red", "blue, bright"] * 2
    read = [infotext.parse(c["parameters"]).params for c in cells]
    assert [(p.prompt, p.seed) for p in read] == [("a red fox", 3), ("a blue, bright fox", 3),
                                                  ("a red fox", 4), ("a blue, bright fox", 4)]
    with pytest.raises(gr.Error, match=r"X values \(Prompt S/R\): 'cat' is not in the prompt"):
        next(studio.xy_plot(Session(), init, prompt="a red fox", x_axis="Prompt S/R",
                            x_values="cat, dog", **FAST))
    # A replacement is held to the prompt's own rules: LoRAs by name, never by path.
    with pytest.raises(gr.Error, match=r"X values \(Prompt S/R\): Prompt: <lora:/etc/x> names a "
                       "file path"):
        next(studio.xy_plot(Session(), init, prompt="a red fox", x_axis="Prompt S/R",
                            x_values="red, <lora:/etc/x:1>", **FAST))


def test_a_failing_cell_fails_the_plot(studio, init, engine, monkeypatch):
    break_cells_with_cfg(engine, monkeypatch, 9)
    views, error = views_until_error(studio.xy_plot(
        Session(), init, seed=2, x_axis="CFG scale", x_values="5, 9, 11", y_axis="Steps",
        y_values="4", strength=0.5, pag_scale=0.0))
    assert error is not None and "the sampler broke" in error.message
    assert views[-1].status.startswith("**Failed** at cell 2/3 (CFG scale 9, Steps 4): The job "
                                       "failed (RuntimeError: the sampler broke)")
    assert views[-1].grid is None and views[-1].path == ""
    assert not any("Done" in v.status for v in views)
    assert not any("Cell 3/3" in v.status for v in views)  # nothing runs after the failure
    assert not list(Path(engine.outputs_dir).rglob("*.png"))
    # The page turns a refused plot's status into a failure too, and keeps a specific one.
    assert studio.xy_failed(views[-1].status) == views[-1].status
    assert studio.xy_failed("⏳ Starting the plot…").startswith("**Failed**")
    with pytest.raises(gr.Error, match=r"X values \(CFG scale\)"):
        next(studio.xy_plot(Session(), init, x_axis="CFG scale", x_values="5, 99"))


def test_the_model_is_loaded_once_per_plot(fresh_engine, init, monkeypatch):
    loads = []
    real = core.load

    def counting(*args, **kwargs):
        loads.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "load", counting)
    studio = Studio(fresh_engine)
    views = list(studio.xy_plot(Session(), init, seed=4, steps=4, strength=0.5,
                                x_axis="PAG scale", x_values="0, 1", y_axis="Sampler",
                                y_values="Euler a, DDIM", z_axis="CFG scale", z_values="5, 7"))
    assert views[-1].status.startswith("**Done**: 8 cells")
    # Eight cells over PAG, samplers and CFG: one model load for them all.
    assert len(loads) == 1, loads


def test_base_settings_summary(studio, init):
    picture, text = studio.xy_base(init, None, "a red | fox", "", 0.4, 7, 20, -1, "Euler a", 0, 0,
                                   "just resize", 1, 1, loras=["film"],
                                   lora_weights=[["film", 0.6]], pag_scale=1.5,
                                   cn2_enabled=True, cn2_model="tiny-canny", cn2_scale=0.7)
    assert picture.size == init.size and picture.tobytes() == init.tobytes()
    for row in ("| Model | tiny-random |", "| Prompt | a red \\| fox |",
                "| Denoising strength | 0.4 |", "| CFG scale | 7 |",
                "| Sampling steps | 20 (effective 8) |", "| Sampler | Euler a |",
                "| Seed | -1 (one random seed for every cell) |",
                "| Size | the init image's size (64×64) |", "| LoRAs | film:0.6 |",
                "| ControlNet | unit 2: tiny-canny (scale 0.7) |", "| PAG scale | 1.5 |"):
        assert row in text, (row, text)
    _, missing = studio.xy_base(None, steps=1000)
    assert missing.startswith("**Not ready:** Sampling steps must be a whole number")
    _, empty = studio.xy_base(None)
    assert empty.startswith("**No init image yet:**")
    started = studio.xy_start(init, None, "fox")
    assert started[0].tobytes() == init.tobytes() and "| Prompt | fox |" in started[1]
    assert started[2:] == ("⏳ Starting the plot…", None, None, "")


# -- with adapters -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_studio(tmp_path_factory):
    from webui.tiny import build_pipeline
    from tests.support.tiny_adapters import make_controlnet, make_lora

    root = tmp_path_factory.mktemp("xy-adapters") / "models"
    pipe = build_pipeline("tiny-random")
    make_lora(pipe, root / "Lora" / "film.safetensors", seed=1)
    make_controlnet(pipe, root / "ControlNet" / "tiny-canny", seed=6)
    engine = Engine(models_dir=root, outputs_dir=root.parent / "outputs", device="cpu",
                    model="tiny-random")
    yield Studio(engine)
    engine.cancel_all()
    engine.unload()


def test_lora_and_controlnet_weight_axes_run(adapter_studio, init):
    studio = adapter_studio
    unit = {"cn2_enabled": True, "cn2_model": "tiny-canny", "cn2_scale": 1.0, "cn2_low": 50,
            "cn2_high": 120}
    views = list(studio.xy_plot(Session(), init, seed=3, x_axis="LoRA weight", x_values="0, 1",
                                y_axis="ControlNet weight", y_values="0.5", loras=["film"],
                                lora_weights=[["film", 0.3]], **FAST, **unit))
    final = views[-1]
    assert final.status == "**Done**: 2 cells, seed 3."
    [path] = saved_grids(studio.engine, final)
    saved = Image.open(path)
    assert infotext.parse(saved.info["parameters"]).extras["X/Y plot"] == \
        "LoRA weight (film) (0, 1) x ControlNet weight (tiny-canny) (0.5)"
    read = [infotext.parse(c["parameters"]) for c in xyplot.read_cells(saved)]
    assert [[(l.name, l.weight) for l in r.params.loras] for r in read] == [[("film", 0.0)],
                                                                            [("film", 1.0)]]
    assert [r.params.controlnets[0].scale for r in read] == [0.5, 0.5]
    with pytest.raises(gr.Error, match=r"X axis \(LoRA weight\): no LoRA is picked"):
        next(studio.xy_plot(Session(), init, x_axis="LoRA weight", x_values="0, 1", **FAST))
    with pytest.raises(gr.Error, match=r"Y axis \(ControlNet weight\): no ControlNet unit"):
        next(studio.xy_plot(Session(), init, y_axis="ControlNet weight", y_values="1", **FAST))


def test_every_axis_is_offered(studio):
    from webui.ui.app import build

    demo = build(studio)
    info = demo.get_api_info()["named_endpoints"]
    names = [p["parameter_name"] for p in info["/xy_plot"]["parameters"]]
    assert names[names.index("x_axis"):names.index("x_axis") + 6] == [
        "x_axis", "x_values", "y_axis", "y_values", "z_axis", "z_values"]
    assert {"/xy_base", "/xy_start", "/xy_failed"} <= set(info)
    dropdowns = {block.elem_id: block for block in demo.blocks.values()
                 if isinstance(block, gr.Dropdown) and (block.elem_id or "").startswith("xy-")}
    def offered(elem_id: str) -> list[str]:
        return [choice[1] if isinstance(choice, tuple) else choice
                for choice in dropdowns[elem_id].choices]

    assert offered("xy-x-axis") == offered("xy-y-axis") == list(xyplot.AXES)
    assert len(xyplot.AXES) == 10
    assert offered("xy-z-axis") == [xyplot.NOTHING, *xyplot.AXES]
    assert dropdowns["xy-z-axis"].value == xyplot.NOTHING


def test_base_summary_opens_only_files_gradio_holds(studio, tmp_path):
    # The summary event skips gradio's preprocessing: a forged payload naming a server file is
    # not opened (no picture shown), exactly as Generate refuses it.
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    picture, _ = studio.xy_base({"path": str(secret), "meta": {"_type": "gradio.FileData"}})
    assert picture is None
