"""The Dagster UI in a real browser: the asset lineage runs from athenahealth to Caspio.

Starts ``dagster-webserver`` (read-only, a temporary ``DAGSTER_HOME``) on this code location on an
ephemeral loopback port, opens the global asset lineage in headless Chromium (Debian's ``chromium``
driven by Playwright; Playwright's own browser downloads are never used), checks that every asset
group is drawn, in flow order, and saves a screenshot to the test's tmp dir; with
``UPDATE_SCREENSHOT=1`` it also refreshes ``docs/images/asset-graph.png`` (the README's), so an
ordinary test run leaves the working tree clean.

Skipped, with the reason, when ``chromium`` or the ``playwright`` package is missing
(``apt-get install chromium``; ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from athena_pipeline.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "asset-graph.png"
#: The asset groups from athenahealth to Caspio, in flow order (each must be right of the one before;
#: ``raw_fhir`` and ``raw_dataview`` sit side by side). Groups a checkout does not define are skipped.
FLOW = (("extract",), ("raw_fhir", "raw_dataview"), ("staging",), ("intermediate",), ("marts",), ("caspio",))
STARTUP_SECONDS = 90

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_kit():
    """Playwright and the system chromium, or a skip that says what to install."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the UI test needs it")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    return sync_api, CHROMIUM


@pytest.fixture(scope="module")
def webserver(browser_kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dagster-webserver`` on this code location with the sandbox defaults; its base URL."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(DAGSTER_HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    executable = Path(sys.executable).with_name("dagster-webserver")
    log = (home / "webserver.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml"), "--read-only"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster-webserver exited ({process.returncode}):\n"
                            + (home / "webserver.log").read_text()[-3000:])
            try:
                if httpx.get(f"{base}/server_info", timeout=2).status_code == 200 and _locations_loaded(base):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("dagster-webserver did not load the code location in time:\n"
                            + (home / "webserver.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        # the webserver runs the code server as its own child: stop the whole session we started
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _graphql(base: str, query: str) -> dict:
    response = httpx.post(f"{base}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


def _locations_loaded(base: str) -> bool:
    data = _graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { "
                          "locationOrLoadError { __typename } } } } }")
    entries = data["workspaceOrError"].get("locationEntries") or []
    kinds = {e["locationOrLoadError"]["__typename"] for e in entries if e["locationOrLoadError"]}
    if "PythonError" in kinds:
        pytest.fail("the code location failed to load in dagster-webserver")
    return kinds == {"RepositoryLocation"}


@pytest.mark.timeout(180)
def test_asset_lineage_runs_from_athenahealth_to_caspio(browser_kit, webserver: str, tmp_path: Path) -> None:
    sync_api, chromium = browser_kit
    defined = {node["groupName"] for node in _graphql(webserver, "{ assetNodes { groupName } }")["assetNodes"]}
    assert {"extract", "raw_fhir", "raw_dataview"} <= defined

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 440}, device_scale_factor=2)
            # the graph gets the room the navigation would take
            page.add_init_script("window.localStorage.setItem('dagster-nav-collapsed', 'true')")
            page.goto(f"{webserver}/asset-groups", wait_until="domcontentloaded")
            groups = page.locator("svg foreignObject.group")
            groups.first.wait_for(timeout=60_000)
            skip = page.get_by_role("button", name="Skip")  # first-visit "join the community" dialog
            try:
                skip.click(timeout=3_000)
            except sync_api.TimeoutError:
                pass
            page.get_by_text("Global asset lineage").first.wait_for()
            page.wait_for_timeout(800)  # the graph's fit-to-view animation
            drawn = {name: x for name, x in groups.evaluate_all(
                "els => els.map(e => [e.textContent.trim(), Number(e.getAttribute('x'))])")}
            tmp_shot = tmp_path / "asset-graph.png"
            page.screenshot(path=str(tmp_shot))
        finally:
            browser.close()

    assert defined <= set(drawn), f"groups missing from the lineage graph: {sorted(defined - set(drawn))}"
    # left to right: athenahealth extracts, raw tables, dbt layers, Caspio
    present = [[g for g in stage if g in drawn] for stage in FLOW]
    present = [stage for stage in present if stage]
    for before, after in itertools.pairwise(present):
        assert max(drawn[g] for g in before) < min(drawn[g] for g in after), (before, after, drawn)
    assert tmp_shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_shot, SCREENSHOT)
