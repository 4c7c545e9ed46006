"""The studio served from a Ray Serve cluster (`--cluster local --replicas 2`), in a real
browser: the same page through Serve's HTTP proxy, the login, a Generate that runs on a replica
and is saved by the front door, two artists generating at the same time on the two replicas,
and the Cluster tab. Needs the cluster extra (the README's test command installs it)."""

from __future__ import annotations

import contextlib
import re
import time

import pytest
from playwright.sync_api import expect

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
requests = pytest.importorskip("requests")

from .conftest import log_in, running_studio, studio_env  # noqa: E402
from .test_studio import JOB_TIMEOUT, picture, set_number, upload  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster_studio(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster-studio")
    env = {**studio_env(), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    with running_studio(base, "--cluster", "local", "--replicas", "2", env=env) as url:
        # Serve's proxy opens the port before the studio is deployed: wait for the page.
        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(url, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (base / "studio.log").read_text()[-3000:]
            time.sleep(1)
        yield {"url": url, "outputs": base / "outputs", "log": base / "studio.log"}


@contextlib.contextmanager
def artist(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        log_in(page, url)
        page.wait_for_selector("#generate", timeout=60_000)
        yield page
    finally:
        context.close()


def test_generate_on_the_cluster_and_see_its_replicas(browser, cluster_studio, tmp_path):
    with artist(browser, cluster_studio["url"]) as page:
        upload(page, "init-image", picture(tmp_path / "init.png", size=96))
        set_number(page, "steps", 3)
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("Done", timeout=JOB_TIMEOUT)
        expect(page.locator("#gallery img").first).to_be_visible()
        assert list(cluster_studio["outputs"].rglob("*.png"))  # saved by the front door
        page.get_by_role("tab", name="Cluster").click()
        status = page.locator("#cluster-status")
        expect(status).to_contain_text("2 replicas")
        expect(status).to_contain_text("tiny-random")


def test_two_artists_generate_at_the_same_time_on_the_two_replicas(browser, cluster_studio,
                                                                    tmp_path):
    init = picture(tmp_path / "init.png", size=192)
    with artist(browser, cluster_studio["url"]) as first, \
            artist(browser, cluster_studio["url"]) as second:
        for page in (first, second):
            upload(page, "init-image", init)
            set_number(page, "steps", 150)
            set_number(page, "strength", 1)
        first.click("#generate")
        second.click("#generate")
        # Both sample at once, one replica each: neither waits in the queue for the other.
        for page in (first, second):
            expect(page.locator("#status")).to_contain_text("Step", timeout=JOB_TIMEOUT)
        assert "Done" not in first.locator("#status").inner_text()
        done = []
        for page in (first, second):
            expect(page.locator("#status")).to_contain_text("Done", timeout=JOB_TIMEOUT)
            done.append(re.search(r"replica (\S+) on node", page.locator("#status")
                                  .inner_text())[1])
        assert done[0] != done[1]
