"""A bounded, loopback-only property-based run over the API's own OpenAPI schema: every
operation gets generated requests (valid and invalid bodies, query values, types), and none may
answer with a server error. The API is served for real by uvicorn on 127.0.0.1.

Bounded: a few examples per operation, sizes above 64x64 refused by the engine's pixel limit,
and jobs over a small step budget refused up front (with a 422, as an over-limit job is), so
the run takes seconds on the CPU whatever hypothesis draws."""

from __future__ import annotations


import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving import served_api
from webui import presets
from webui.api import ApiService, create_app
from webui.engine import Engine, InputError, JobRequest

pytestmark = pytest.mark.filterwarnings("ignore")
# Steps x images a generated job may cost here; larger ones are refused before the queue.
STEP_BUDGET = 40


class BudgetEngine(Engine):
    """The in-process engine with a step budget per job, so that a generated request for 100
    batches of 150 steps cannot hold the run for minutes."""

    def submit(self, request, *args, **kwargs):
        params = request.params if isinstance(request, JobRequest) else request
        if params.images_per_job * params.steps > STEP_BUDGET:
            raise InputError("steps", f"steps x images over this test's budget of {STEP_BUDGET}")
        return super().submit(request, *args, **kwargs)


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    engine = BudgetEngine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                          model="tiny-random", max_pixels=64 * 64)
    service = ApiService(engine, presets.PresetStore(root / "presets"))
    with served_api(create_app(service)) as port:
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    engine.cancel_all()
    engine.unload()


def test_no_request_makes_the_server_fail(api_schema):
    """Every operation of the schema, each with generated requests; none answers 5xx, and
    every JSON error answer has the clients' error shape."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    calls: list[str] = []
    for operation in operations:

        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(timeout=60)
            calls.append(operation.label)
            assert response.status_code < 500, (operation.label, case.body, response.text)
            # The case's response keeps every value of a header (a list).
            kind = " ".join(response.headers.get("content-type") or [])
            if response.status_code >= 400 and kind.startswith("application/json"):
                assert {"error", "detail"} <= set(response.json()), response.text

        check()
    assert {"POST /sdapi/v1/img2img", "POST /sdapi/v1/txt2img", "POST /sdapi/v1/options",
            "GET /sdapi/v1/progress"} <= set(calls)
