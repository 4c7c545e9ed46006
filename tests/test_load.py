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


def test_a_page_client_waits_for_an_upload_the_busy_server_reads_late(tmp_path):
    """On a busy machine (the clients share the server's process) the server may take seconds
    to read an upload; the load test's page client waits, as its API clients do, instead of
    counting the request as failed after its library's few-second default (seen in CI as
    "ReadTimeout: timed out" errors)."""
    import asyncio

    import gradio as gr
    from fastapi import FastAPI
    from gradio_client import handle_file

    late = 6.0  # beyond the client library's default wait

    class SlowUploads:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"].endswith("/upload"):
                await asyncio.sleep(late)
            await self.app(scope, receive, send)

    with gr.Blocks() as demo:
        picture, size = gr.Image(type="pil"), gr.Textbox()
        gr.Button().click(lambda p: f"{p.width}x{p.height}", picture, size, api_name="size")
    app = SlowUploads(gr.mount_gradio_app(FastAPI(), demo, path="",
                                          auth=[("artist", "pw")]))
    server, port, thread = load._serve(app)
    try:
        path = tmp_path / "init.png"
        load.client_picture(3).resize((96, 80)).save(path)
        client = load.page_client(f"http://127.0.0.1:{port}", ("artist", "pw"))
        assert client.predict(handle_file(path), api_name="/size") == "96x80"
        client.close()
    finally:
        server.should_exit = True
        thread.join(30)

