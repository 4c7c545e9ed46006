"""The load test (webui/bench/load.py) at a bounded size: 20 concurrent clients, page
(gradio_client) and REST API mixed, on a loopback studio with tiny-random. Every request is
answered once — a result that is its own (seed, prompt, one saved file each) or the studio's
clear "busy" — each page client was sent its own job's live previews, each API client sees its
own presets only, and the server's memory comes back near where it started."""

from __future__ import annotations

import dataclasses

from webui.bench import load
from webui.engine import Engine


def test_twenty_clients_on_page_and_api_get_their_own_results_or_busy(tmp_path):
    report = load.run(clients=20, requests=2, steps=2, queue_size=4, retries=40)
    summary = report.summary()["load"]
    assert summary["requests"] == 40 == len(report.outcomes)
    assert summary["lost"] == 0 and summary["errors"] == 0, summary["error_details"]
    assert summary["answered"] == summary["completed"] + summary["refused_busy"] == 40
    assert summary["mixups"] == 0 and summary["preset_mixups"] == 0
    # Every page job's previews were compared with its own job's, and all were its own.
    assert summary["previews_checked"] >= summary["by_door"]["page"]["done"] > 0
    assert summary["preview_mixups"] == 0
    # Each finished job wrote exactly one file: none ran twice, none was dropped unsaved.
    assert summary["saved_files"] == summary["completed"] > 0
    # Both doors were served under the load, and the queue really was full at times.
    assert summary["by_door"]["page"]["done"] > 0 and summary["by_door"]["api"]["done"] > 0
    assert summary["busy_answers_retried"] + summary["refused_busy"] > 0
    for outcome in report.outcomes:
        if outcome.state == "busy":
            assert "busy" in outcome.detail
    # Memory: what twenty sessions leave behind is small next to the process itself.
    assert summary["rss_after_mb"] - summary["rss_baseline_mb"] < 256, summary

    # The preview check catches a mix-up: two clients' previews swapped are both counted.
    shown = [o for o in report.outcomes if o.door == "page" and o.previews][:2]
    assert len(shown) == 2
    first, second = (dataclasses.replace(o) for o in shown)
    first.previews, second.previews = shown[1].previews, shown[0].previews
    swapped = load.LoadReport(report.clients, report.requests, outcomes=[first, second])
    engine = Engine(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs",
                    device="cpu", model="tiny-random")
    load.check_previews(engine, swapped)
    engine.unload()
    assert swapped.previews_checked >= 2 and swapped.preview_mixups == swapped.previews_checked
