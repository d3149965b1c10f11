"""The live page in a real browser (Debian's chromium, driven by Playwright): models appear as
they load and go as they are evicted, within a second of the request's answer."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests

from ..conftest import free_port
from .models import make_echo

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

    Models = make_echo(3, load_s=0.2, name="Models", num_replicas=1)
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


def test_page_shows_a_pending_replica_and_what_it_waits_for(browser):
    import modelplex as serve

    accel = {"resources": {"accel": 1}}
    Big = make_echo(1, name="Big", ray_actor_options=accel)
    Small = make_echo(1, name="Small", ray_actor_options=accel)
    port = free_port()
    serve.start(http_options={"port": port, "management_token": TOKEN}, resources={"accel": 1})
    try:
        serve.run(Big.bind(), name="big", route_prefix="/big")
        serve.run(Small.bind(), name="small", route_prefix="/small")  # returns: it waits for big
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(f"http://127.0.0.1:{port}/-/dashboard?token={TOKEN}")
        page.wait_for_selector('th.replica[data-state="pending"]', timeout=5000)
        assert "waiting for 1 accel: 0 of 1 free" in page.inner_text('th[data-state="pending"]')
        assert "accel 0/1 free" in page.inner_text("#node")
        serve.delete("big")  # its room goes to the pending replica; the page follows
        page.wait_for_function(
            "!document.querySelector('th.replica[data-state=\"pending\"]') && "
            "document.querySelectorAll('th.replica[data-state=\"running\"]').length === 1",
            timeout=15000,
        )
    finally:
        serve.shutdown()


def test_page_opened_before_traffic_shows_every_load_and_nothing_in_flight(browser):
    """6 new model ids at once on 2 replicas of 2 slots: 6 loads and 2 evictions, some of them
    between two looks of the page. Every one is on the timeline (the replicas tell them), the
    loads/min say 6, and once idle "ongoing" stays 0 while the page keeps probing."""
    import concurrent.futures

    import modelplex as serve

    Models = make_echo(2, load_s=0.02, name="Models", num_replicas=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"port": port})
    try:
        serve.run(Models.bind())
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(f"{url}/-/dashboard")
        page.wait_for_function("document.getElementById('conn').textContent.startsWith('live')")

        def get(model: str) -> int:
            return requests.get(url, headers={"serve_multiplexed_model_id": model}, timeout=30).status_code

        models = [f"m{i}" for i in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(get, models)) == [200] * 6
        page.wait_for_function(
            "document.querySelectorAll('#timeline div[data-event=\"loaded\"]').length >= 6",
            timeout=5000)
        page.wait_for_function(
            "document.querySelectorAll('#timeline div[data-event=\"unloaded\"]').length >= 2",
            timeout=5000)
        loaded = page.eval_on_selector_all(
            '#timeline div[data-event="loaded"]', "els => els.map(e => e.dataset.model)")
        assert sorted(loaded) == models, loaded
        stat = '[data-deployment="Models"] [data-stat="{}"] b'
        page.wait_for_function(
            f"document.querySelector('{stat.format('loads')}')?.textContent === '6'", timeout=5000)
        # Idle now: each look of the page probes both replicas, and no probe counts as a request.
        ongoing = []
        for _ in range(6):
            ongoing.append(page.inner_text(stat.format("ongoing")))
            page.wait_for_timeout(300)
        assert ongoing == ["0"] * 6, ongoing
        assert page.inner_text(stat.format("hit_rate")) == "0%"  # 6 misses, nothing else
        assert page.inner_text(stat.format("latency_p50")) != "–"
        assert page.inner_text(stat.format("load_p50")) != "–"
    finally:
        serve.shutdown()
