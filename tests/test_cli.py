"""`python -m webui generate`: a few real subprocess runs (each pays the imports), the rest through
`webui.__main__.main([...])` in-process, which returns the exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from webui import infotext
from webui.__main__ import main
from webui.engine import outputs


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "webui", "generate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_line(stderr: str) -> str:
    """The one `error:` line; fails if there is none or more than one."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def printed(stdout: str) -> list[tuple[str, str]]:
    """(path, infotext) blocks as printed: a path line, the infotext (whose last line is the
    settings line, while its prompt may be empty or hold blank lines), a blank line."""
    blocks, lines = [], stdout.splitlines()
    while lines:
        path = lines.pop(0)
        end = next(i for i, line in enumerate(lines) if line.startswith("Steps: "))
        blocks.append((path, "\n".join(lines[: end + 1])))
        assert lines[end + 1] == "", stdout
        lines = lines[end + 2:]
    return blocks


def png_text(path: Path) -> str:
    with Image.open(path) as image:
        return outputs.read_infotext(image)


@pytest.fixture
def init_png(tmp_path, make_image) -> Path:
    path = tmp_path / "in.png"
    make_image(64, 64, seed=5).save(path)
    return path


@pytest.fixture
def gen(tmp_path, monkeypatch, init_png, capsys):
    """gen(*flags) -> (exit code, stdout, stderr) of an in-process `generate --init in.png ...`."""
    monkeypatch.chdir(tmp_path)

    def call(*flags: str, init: str | None = None):
        argv = ["generate", "--init", init or str(init_png), "--models-dir", str(tmp_path / "models"),
                "--outputs-dir", str(tmp_path / "outputs"), "--device", "cpu", *flags]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_an_outputs_folder_that_cannot_be_written_fails_and_says_why(gen, tmp_path):
    (tmp_path / "outputs").write_text("a file where the folder should be")
    code, out, err = gen("--steps", "2", "--strength", "0.5")
    assert code == 1
    assert out.startswith("(not saved)\n") and "note: not saved" in err


# -- subprocess ----------------------------------------------------------------------------------
def test_subprocess_success_prints_path_and_infotext(tmp_path, init_png):
    proc = run_cli(tmp_path, "--init", "in.png", "--steps", "2", "--strength", "0.5", "--seed", "5",
                   "--prompt", 'a fox, "sly"', "--scheduler", "DPMSolverMultistepScheduler",
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    [(path, text)] = printed(proc.stdout)
    written = tmp_path / path
    assert written.is_file()
    assert written.parent.parent == tmp_path / "outputs" / "img2img"
    assert written.name == "00000-5.png"
    assert png_text(written) == text
    parsed = infotext.parse(text)
    assert parsed.params.prompt == 'a fox, "sly"'
    assert (parsed.params.seed, parsed.params.steps, parsed.params.strength) == (5, 2, 0.5)
    assert parsed.params.scheduler == "DPM++ 2M"
    assert "effective steps: 1" in proc.stderr


def test_subprocess_bad_strength(tmp_path, init_png):
    proc = run_cli(tmp_path, "--init", "in.png", "--strength", "2")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == error_line(proc.stderr)  # one line, nothing else
    assert "--strength" in proc.stderr and "from 0 to 1" in proc.stderr


def test_subprocess_pickle_model_refused(tmp_path, init_png):
    (tmp_path / "model.ckpt").write_bytes(b"pretend pickle")
    proc = run_cli(tmp_path, "--init", "in.png", "--model", "model.ckpt", "--steps", "2")
    assert proc.returncode != 0
    assert "pickle" in error_line(proc.stderr)
    assert "Traceback" not in proc.stderr


# -- in-process ----------------------------------------------------------------------------------
def test_out_file(gen, tmp_path):
    target = tmp_path / "sub" / "result.png"
    code, out, err = gen("--steps", "2", "--strength", "0.5", "--seed", "9", "--out", str(target))
    assert code == 0, err
    [(path, text)] = printed(out)
    assert path == str(target)
    assert target.is_file()
    assert png_text(target) == text
    assert "Seed: 9," in text
    assert not (tmp_path / "outputs").exists()  # --out replaces the outputs folder
    assert not [p for p in target.parent.iterdir() if p.name != "result.png"]  # no temp file left


def test_out_dir(gen, tmp_path):
    folder = tmp_path / "renders"
    code, out, err = gen("--steps", "2", "--strength", "0.5", "--seed", "4", "--batch-size", "2",
                         "--out", str(folder))
    assert code == 0, err
    blocks = printed(out)
    assert [Path(p).name for p, _ in blocks] == ["00000-4.png", "00001-5.png"]
    for path, text in blocks:
        assert Path(path).parent == folder
        assert png_text(Path(path)) == text
    assert not (tmp_path / "outputs").exists()


def test_out_file_with_several_images(gen, tmp_path):
    code, out, err = gen("--batch-count", "2", "--out", str(tmp_path / "one.png"))
    assert code == 2
    assert "--out" in error_line(err) and "folder" in err
    assert not (tmp_path / "one.png").exists()


@pytest.mark.parametrize("flag,value,expect", [
    ("--strength", "-0.1", "from 0 to 1"),
    ("--strength", "abc", "from 0 to 1"),
    ("--steps", "0", "from 1 to 150"),
    ("--steps", "2.5", "whole number"),
    ("--cfg", "nan", "from 0 to 30"),
    ("--seed", "-2", "from -1 to"),
    ("--width", "10", "from 64 to 4096"),
    ("--scheduler", "Restart", "Euler a"),
    ("--resize-mode", "stretch", "crop and resize"),
    ("--dtype", "fp8", "fp32"),
    ("--batch-size", "9", "from 1 to 8"),
    ("--lora-rank", "2000", "from 0 to 1024"),
    ("--lora-rank", "8.5", "whole number from 0 to 1024"),
])
def test_bad_flag_exits_2_naming_it(gen, tmp_path, flag, value, expect):
    code, out, err = gen(flag, value)
    assert code == 2
    assert out == ""
    line = error_line(err)
    assert err.strip() == line  # nothing but the one line
    assert line.startswith(f"error: {flag}:")
    assert expect in line
    assert not (tmp_path / "outputs").exists()


def test_missing_init(gen, tmp_path):
    code, out, err = gen(init=str(tmp_path / "missing.png"))
    assert code == 2
    assert error_line(err).startswith("error: --init: no such file")
    assert "missing.png" in err


def test_text_file_as_init(gen, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("just some text\n")
    code, out, err = gen("--steps", "2", init=str(notes))
    assert code == 2
    line = error_line(err)
    assert line.startswith("error: --init:") and "not an image file" in line
    assert "Traceback" not in err and out == ""


def test_fp16_on_the_cpu(gen):
    code, out, err = gen("--steps", "2", "--dtype", "fp16")
    assert code == 2
    line = error_line(err)
    assert line.startswith("error: --dtype:") and "fp16" in line


def test_strength_zero_writes_the_original(gen, init_png):
    code, out, err = gen("--strength", "0", "--seed", "3")
    assert code == 0, err
    [(path, text)] = printed(out)
    with Image.open(path) as saved, Image.open(init_png) as original:
        assert saved.convert("RGB").tobytes() == original.convert("RGB").tobytes()
    assert "note: strength 0 returns the original image" in err
    assert "Denoising strength: 0," in text


def test_missing_init_flag_is_an_error(capsys):
    assert main(["generate", "--strength", "0.5"]) == 2
    assert "error: --init: an init image is required" in capsys.readouterr().err


# -- adapter flags -----------------------------------------------------------------------------
def test_unknown_lora_exits_2_naming_the_flag(gen):
    code, out, err = gen("--steps", "2", "--lora", "nope:0.5")
    assert code == 2
    assert error_line(err).startswith("error: --lora: unknown LoRA 'nope'")


@pytest.mark.parametrize("flags, expect", [
    (("--lora", "film:9"), "error: --lora: loras[0].weight must be a number from -4 to 4"),
    (("--controlnet", "cn", "--control-scale", "5"),
     "error: --control-scale: controlnets[0].scale must be a number from 0 to 2"),
    (("--controlnet", "cn", "--control-preprocessor", "sketch"),
     "error: --control-preprocessor: controlnets[0].preprocessor must be one of: canny, depth"),
    (("--pag-scale", "-1"), "error: --pag-scale: pag_scale must be a number from 0 to 10"),
    (("--masked-content", "glue"), "error: --masked-content: masked_content must be one of"),
    (("--mask", "absent.png"), "error: --mask: no such file"),
])
def test_bad_adapter_flags(gen, flags, expect):
    code, out, err = gen("--steps", "2", *flags)
    assert code == 2
    assert error_line(err).startswith(expect), err


def test_latent_output_then_latent_input(gen, tmp_path):
    code, out, err = gen("--steps", "4", "--seed", "5", "--output-type", "latent",
                         "--out", str(tmp_path / "lat"))
    assert code == 0, err
    [(path, text)] = printed(out)
    assert path.endswith(".safetensors") and Path(path).is_file()
    argv = ["generate", "--latents", path, "--steps", "4", "--models-dir", str(tmp_path / "m"),
            "--out", str(tmp_path / "png"), "--device", "cpu"]
    assert main(argv) == 0
    assert list((tmp_path / "png").glob("*.png"))


def test_mask_switches_to_inpainting(gen, tmp_path):
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(mask)
    code, out, err = gen("--steps", "4", "--pag-scale", "0", "--mask", str(mask),
                         "--inpaint-area", "only masked")
    assert code == 0, err
    [(path, text)] = printed(out)
    assert "Inpaint area: Only masked" in text and "Mask blur: 4" in text


def test_depth_preprocessor_with_a_detector_model(gen, tmp_path):
    from webui.tiny import build_pipeline
    from tests.support.tiny_adapters import make_controlnet, make_depth_detector

    controlnet = make_controlnet(build_pipeline("tiny-random"), tmp_path / "cn", seed=1)
    flags = ("--steps", "2", "--pag-scale", "0", "--controlnet", str(controlnet),
             "--control-preprocessor", "depth")
    code, out, err = gen(*flags)
    assert code == 2
    assert error_line(err).startswith("error: --control-detector: ControlNet 1: preprocessor "
                                      "'depth' needs a depth-estimation model"), err
    make_depth_detector(tmp_path / "models" / "ControlNet-preprocessors" / "tiny-depth")
    code, out, err = gen(*flags)
    assert code == 0, err
    [(path, text)] = printed(out)
    assert "preprocessor: depth" in text and "detector: tiny-depth" in text


# -- xy: a plot headless -------------------------------------------------------------------------
@pytest.fixture
def plot(tmp_path, monkeypatch, init_png, capsys):
    """plot(*flags) -> (exit code, stdout, stderr) of an in-process `xy --init in.png ...`."""
    monkeypatch.chdir(tmp_path)

    def call(*flags: str):
        argv = ["xy", "--init", str(init_png), "--models-dir", str(tmp_path / "models"),
                "--outputs-dir", str(tmp_path / "outputs"), "--device", "cpu", "--pag-scale", "0",
                *flags]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_xy_writes_the_grid_with_every_cell(plot, tmp_path):
    from webui import xyplot

    code, out, err = plot("--prompt", "a fox", "--width", "64", "--height", "96", "--seed", "7",
                          "--strength", "0.5", "--x-axis", "CFG scale", "--x-values", "5,9",
                          "--y-axis", "steps", "--y-values", "2, 3")
    assert code == 0, err
    [line] = out.splitlines()
    path = tmp_path / line
    assert path.parent.parent == tmp_path / "outputs" / xyplot.GRIDS_SUBDIR
    assert path.name == "00000-7.png"
    assert "X/Y plot: 4 cells, seed 7" in err and "Cell 4/4 (CFG scale 9, Steps 3): done" in err
    with Image.open(path) as saved:
        grid = infotext.parse(saved.info["parameters"])
        cells = xyplot.read_cells(saved)
    assert grid.extras["X/Y plot"] == "CFG scale (5, 9) x Steps (2, 3)"
    assert [(c["x"], c["y"]) for c in cells] == [("5", "2"), ("9", "2"), ("5", "3"), ("9", "3")]
    read = [infotext.parse(c["parameters"]).params for c in cells]
    assert [(p.guidance_scale, p.steps) for p in read] == [(5, 2), (9, 2), (5, 3), (9, 3)]
    assert {(p.seed, p.width, p.height, p.prompt) for p in read} == {(7, 64, 96, "a fox")}
    assert not (tmp_path / "outputs" / "img2img").exists()  # cells are not saved on their own


def test_xy_one_row_into_a_folder(plot, tmp_path):
    from webui import xyplot

    folder = tmp_path / "plots"
    code, out, err = plot("--steps", "2", "--strength", "0.5", "--cfg", "6", "--seed", "4",
                          "--x-axis", "Seed", "--x-values", "1, 2", "--out", str(folder))
    assert code == 0, err
    assert [Path(p) for p in out.splitlines()] == [folder / "00000-4.png"]
    with Image.open(folder / "00000-4.png") as saved:
        # Without a Y axis the one row is labelled with the base's own CFG scale.
        assert infotext.parse(saved.info["parameters"]).extras["X/Y plot"] == \
            "Seed (1, 2) x CFG scale (6)"
        assert [c["x"] for c in xyplot.read_cells(saved)] == ["1", "2"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("flags,expect", [
    (("--x-axis", "CFG scale", "--x-values", "5,99"), "--x-values: X values (CFG scale): "),
    (("--x-axis", "Hires steps", "--x-values", "1"), "--x-axis: X axis must be one of"),
    (("--x-values", "1, 2"), "--x-axis: X axis: name the setting"),
    (("--x-axis", "Steps", "--x-values", "2", "--y-values", "5"), "--y-axis: Y axis: name"),
    (("--x-axis", "Steps", "--x-values", "2", "--y-axis", "CFG scale"), "--y-values: Y values: "
     "type CFG scale values"),
    (("--x-axis", "Steps", "--x-values", "2", "--y-axis", "CFG scale", "--y-values", "5",
      "--z-axis", "Steps", "--z-values", "3"), "--z-axis: X and Z are both Steps"),
    (("--x-axis", "Steps", "--x-values", "2", "--z-axis", "Seed", "--z-values", "1, 2", "--out",
      "grid.png"), "--out: a Z axis makes one grid per value"),
    (("--x-axis", "Steps", "--x-values", "2", "--cfg", "40"), "--cfg: "),
])
def test_xy_bad_input_exits_2_naming_the_option(plot, tmp_path, flags, expect):
    code, out, err = plot(*flags)
    assert code == 2
    assert out == ""
    line = error_line(err)
    assert err.strip() == line  # nothing but the one line
    assert line.startswith(f"error: {expect}"), line
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "grid.png").exists()


def test_xy_out_file(plot, tmp_path):
    from webui import xyplot

    target = tmp_path / "sub" / "grid.png"
    code, out, err = plot("--steps", "2", "--strength", "0.5", "--x-axis", "Denoising strength",
                          "--x-values", "0.3", "--y-axis", "CFG scale", "--y-values", "5",
                          "--out", str(target))
    assert code == 0, err
    assert out.splitlines() == [str(target)]
    with Image.open(target) as saved:
        assert len(xyplot.read_cells(saved)) == 1
    assert not [p for p in target.parent.iterdir() if p.name != "grid.png"]  # no temp file left
