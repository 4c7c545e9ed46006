"""img2img-webui: a browser studio for Stable Diffusion image-to-image."""

import os

# The model libraries log optional-backend notices on import; the studio's own messages say what
# matters. Errors still show.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
