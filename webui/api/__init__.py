"""The REST API: the `/sdapi/v1` routes the established Stable Diffusion clients speak (chat
front ends, editor plugins, bots, the `webuiapi` package), so this studio is a drop-in back end
for them. A second front door on the same engine interface and the same queue as the studio.

- schema.py: the request and response bodies (field names, types and defaults as the clients
  send them).
- convert.py: request bodies into JobRequests, Results into responses.
- service.py: what each route does (jobs, progress, interrupt, options, listings).
- access.py: HTTP Basic for every route, API admins.
- app.py: the FastAPI application, its error answers, CORS, and serving it alone or on the
  studio's port.
"""

from .access import Access, Caller
from .app import ApiDispatch, create_app, mount
from .service import ApiService

__all__ = ["Access", "ApiDispatch", "ApiService", "Caller", "create_app", "mount"]
