"""The benchmark's CPU run as a smoke test: `python -m webui.bench` as the README runs it, on
tiny-random at one size and one sampler, checked for what each JSON line must say. Speed itself
is judged by reading the figures, never here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_compares_plain_diffusers_with_the_engine(tmp_path):
    out = tmp_path / "bench.jsonl"
    command = [sys.executable, "-m", "webui.bench", "--size", "64x64", "--scheduler", "Euler a",
               "--runs", "2", "--steps", "10", "--cold", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in out.read_text().splitlines()] == printed
    parsers, environment, *cases, cold = printed
    # The figures against the 1 s budget are the benchmark's to judge; here, on a busy shared
    # machine, the behaviour: every parser answered, and none backtracked (a backtracking
    # parser takes minutes, not seconds, on 1 MB).
    assert parsers["parsers"] and parsers["budget_s"] == 1.0
    assert all(0 <= case["seconds"] < 10 * case["budget_s"] for case in parsers["parsers"])
    assert all(case["within_budget"] == (case["seconds"] <= case["budget_s"])
               for case in parsers["parsers"])
    assert environment["device"] == "cpu" and environment["torch"] and environment["diffusers"]
    assert [(c["model"], c["size"], c["scheduler"], c["pag_scale"]) for c in cases] == [
        ("tiny-random", "64x64", "Euler a", 0.0), ("tiny-random", "64x64", "Euler a", 3.0)]
    for case in cases:
        for side in ("plain", "engine"):
            figures = case[side]
            assert figures["runs"] == 2
            assert 0 < figures["s_per_image_min"] <= figures["s_per_image"] \
                <= figures["s_per_image_max"]
            # 10 steps at strength 0.8: 8 UNet calls, CFG (and PAG) batched into each.
            assert figures["unet_calls"] == 8
            # Both come from the median job: calls per second times seconds is the calls.
            assert abs(figures["unet_calls_per_s"] * figures["s_per_image"] - 8) < 0.1
            assert figures["warmup_s"] > 0 and figures["process_peak_rss_gib"] > 0
        assert case["ratio"] == round(case["plain"]["s_per_image"]
                                      / case["engine"]["s_per_image"], 3)
        # The previews' cost: at least the last step's was sent, each took some time, and the
        # share is their time over the job's.
        ours = case["engine"]
        assert ours["previews_per_image"] >= 1 and ours["preview_ms"] > 0
        share = 100 * ours["previews_per_image"] * ours["preview_ms"] / 1000 / ours["s_per_image"]
        assert abs(ours["preview_share_pct"] - share) < 0.01 + share / 100
        assert "previews_per_image" not in case["plain"]
    plain_pag0, pag3 = cases
    # Same weights, inputs and seed: without PAG the engine makes the plain call's picture.
    assert plain_pag0["max_pixel_difference"] == 0
    assert pag3["max_pixel_difference"] > 0  # PAG changes it
    assert cold["cold"] == "tiny-random 64x64"
    assert cold["empty_cache_first_image_s"] > 0 and cold["warm_cache_first_image_s"] > 0
    assert "empty_cache_compiled_s" not in cold  # the CPU default: no compiled UNet
    assert not list(tmp_path.glob("outputs")), "the benchmark saves nothing"
