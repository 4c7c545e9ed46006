"""The Cluster tab, shown when the studio runs on Ray Serve replicas (--cluster): each replica's
node, GPU, loaded model and busy/idle, and the queue, refreshed every few seconds while the
tab is open and on Refresh."""

from __future__ import annotations

import gradio as gr

# Seconds between refreshes of the open tab.
REFRESH_S = 3.0


def table(engine) -> str:
    """The cluster's status as a Markdown table (a line saying why when it cannot be read)."""
    try:
        status = engine.cluster_status()
    except Exception as exc:  # noqa: BLE001 - the panel must not break the page
        return f"The cluster's status could not be read ({type(exc).__name__}: {exc})."
    queue = status["queue"]
    lines = [f"**{len(status['replicas'])} replicas**; jobs waiting: {queue.waiting} "
             f"(room for {queue.capacity})", "",
             "| replica | node | GPU | device | model | state |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in status["replicas"]:
        lines.append(f"| {r['replica']} | {r['node'][:8]} | {r['gpu'] or '-'} | {r['device']} "
                     f"| {r['model'] or '(none yet)'} | {'busy' if r['busy'] else 'idle'} |")
    if not status["replicas"]:
        lines.append("| (no replica is posting: starting, or all stopped) | | | | | |")
    return "\n".join(lines)


def add(engine) -> None:
    """The tab, placed where it is called (inside the page's gr.Tabs)."""
    with gr.Tab("Cluster", id="cluster", elem_id="tab-cluster") as tab:
        view = gr.Markdown(table(engine), elem_id="cluster-status")
        refresh = gr.Button("Refresh", size="sm", elem_id="cluster-refresh")
        timer = gr.Timer(REFRESH_S, active=False)
    show = dict(queue=False, show_progress="hidden")
    refresh.click(lambda: table(engine), None, view, api_name="cluster_status", **show)
    # The timer runs only while the tab is open.
    tab.select(lambda: (table(engine), gr.Timer(active=True)), None, [view, timer], **show)
    timer.tick(lambda: table(engine), None, view, **show)
