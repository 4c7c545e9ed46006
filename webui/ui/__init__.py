"""The browser studio: Gradio layout, event handlers, X/Y grids and the launcher.

Nothing in this package imports torch or diffusers: the engine object does that itself, lazily,
on its first job. Gradio's usage analytics are switched off here, before any submodule can import
gradio, because the studio must work (and stay quiet) with no network at all.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
