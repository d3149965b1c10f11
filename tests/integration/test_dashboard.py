"""The live page in a real browser (Debian's chromium, driven by Playwright): models appear as
they load and go as they are evicted, within a second of the request's answer."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest
import requests

from ..conftest import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TOKEN = "page-token"


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not found: `sh tools/system-deps.sh` installs it (Debian, as root)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_page_shows_loads_and_evictions_live(browser, tmp_path):
    import modelplex as serve

    @serve.deployment(num_replicas=1)
    class Models:
        @serve.multiplexed(max_num_models_per_replica=3)
        async def get_model(self, model_id):
            await asyncio.sleep(0.2)
            return model_id

        async def __call__(self, request):
            return await self.get_model(serve.get_multiplexed_model_id())

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"port": port, "management_token": TOKEN})
    try:
        serve.run(Models.bind())
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(f"{url}/-/dashboard?token={TOKEN}")
        page.wait_for_function("document.getElementById('conn').textContent.startsWith('live')")
        assert "token" not in page.url  # taken out of the address bar; kept in a cookie

        latencies = {}
        for model in ("m1", "m2", "m3"):
            r = requests.get(url, headers={"serve_multiplexed_model_id": model}, timeout=30)
            answered_ms = time.time() * 1000
            assert r.status_code == 200, r.text
            page.wait_for_selector(f'td[data-model="{model}"][data-state="loaded"]', timeout=5000)
            seen_ms = page.evaluate(
                "m => Object.entries(window.firstSeen).find(([k]) => k.endsWith('|' + m))[1]", model
            )
            latencies[model] = max(0.0, seen_ms - answered_ms)
        # A fourth model past max_num_models_per_replica=3 evicts the least recently used, m1.
        r = requests.get(url, headers={"serve_multiplexed_model_id": "m4"}, timeout=30)
        answered_ms = time.time() * 1000
        page.wait_for_function(
            "!document.querySelector('td[data-model=\"m1\"]:not([data-state=\"empty\"])')",
            timeout=5000,
        )
        latencies["m1 evicted"] = time.time() * 1000 - answered_ms  # an upper bound: polled
        page.wait_for_selector('td[data-model="m4"][data-state="loaded"]', timeout=5000)
        timeline = page.inner_text("#timeline")
        assert "unloaded m1" in timeline and "loaded m4" in timeline, timeline
        stats = page.inner_text('[data-deployment="Models"]')
        assert "hit rate" in stats and "load p99" in stats
        page.screenshot(path=str(tmp_path / "dashboard.png"))
        print("\npage update latency after the answer (ms):",
              ", ".join(f"{k} {v:.0f}" for k, v in latencies.items()))
        print("screenshot:", tmp_path / "dashboard.png")
        assert max(latencies.values()) < 1000, latencies
    finally:
        serve.shutdown()
