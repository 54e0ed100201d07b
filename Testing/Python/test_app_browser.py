"""The browser demo in a real browser: Debian's chromium driven by Playwright (never ``playwright install``).

Starts ``medsam-agent app`` on a free loopback port, waits until the picture is really decoded, clicks on the
target and presses Start, Accept, Continue, Undo and Finish, and checks what the page shows (mask pixels in the
overlay, undo restoring them exactly, the step table) and the downloaded mask and trajectory log. Screenshots
go to Testing/artifacts/app/. The click-to-mask round trip is measured over a few corrections and printed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from MedSAMAgentLib import colors  # noqa: E402
from MedSAMAgentLib.manifest import bundled_manifest, load_case  # noqa: E402
from MedSAMAgentLib.metrics import dice  # noqa: E402
from MedSAMAgentLib.trajectory import read_episodes  # noqa: E402
from fault_server import free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
CASE = "medscribble/BTCV/0763890-Image_axis1_maxslice"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "app"
REPO = Path(__file__).resolve().parents[2]
SLOW_MS = 600_000  # first Start loads the model and encodes the image on a busy 2-core machine

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed "
                                "(.ci/run installs it: apt-get install -y chromium)")

# Pixel statistics of the displayed picture, decoded by the browser itself (a canvas of the <img>): mask
# interior pixels are grey blended 0.35 with colors.MASK (so g - r and b - r are fixed), edges are MASK itself.
PIXELS_JS = """([mask, amber]) => {
  const img = document.querySelector('#picture img');
  if (!img || !img.complete || img.naturalWidth === 0) return null;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let tinted = 0, edge = 0, proposal = 0, lit = 0, sum = 0;
  const gr = 0.35 * mask[1] - 0.35 * mask[0], br = 0.35 * mask[2] - 0.35 * mask[0];
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], gg = d[i + 1], b = d[i + 2];
    sum = (sum * 31 + r * 7 + gg * 3 + b) % 1000000007;
    if (r + gg + b > 30) lit++;
    if (r === mask[0] && gg === mask[1] && b === mask[2]) edge++;
    else if (Math.abs(gg - r - gr) <= 2 && Math.abs(b - r - br) <= 2) tinted++;
    if (r === amber[0] && gg === amber[1] && b === amber[2]) proposal++;
  }
  return {src: img.src, width: c.width, height: c.height, tinted, edge, proposal, lit, checksum: sum};
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("app-out")
    port = free_port()
    log_path = out / "server.log"
    env = dict(os.environ, MEDSAM_AGENT_DEBUG="1")
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "MedSAMAgentLib.cli", "app", "--port", str(port),
                                    "--out", str(out / "sessions"), "--case", CASE, "--device", "cpu"],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the app did not answer within 180 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "port": port, "out": out, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def case():
    return load_case({c.id: c for c in bundled_manifest()}[CASE])


class Page:
    """The app's page, with waits on what the user sees."""

    def __init__(self, page):
        self.page = page

    def pixels(self) -> dict:
        return self.page.evaluate(PIXELS_JS, [list(colors.MASK), list(colors.PROPOSAL)])

    def rendered(self, previous: str | None = None, timeout_ms: int = 60_000) -> dict:
        """Wait until the picture is decoded (not the loading veil) and, if given, differs from ``previous``."""
        self.page.wait_for_function(
            "([prev]) => { const i = document.querySelector('#picture img');"
            " return i && i.complete && i.naturalWidth > 0 && (prev === null || i.src !== prev); }",
            arg=[previous], timeout=timeout_ms)
        # two animation frames: every part of the same update (status, table, picture) is in the DOM
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.wait_for_function("() => { const i = document.querySelector('#picture img');"
                                    " return i.complete && i.naturalWidth > 0; }", timeout=timeout_ms)
        stats = self.pixels()
        assert stats is not None and stats["lit"] > 0.2 * stats["width"] * stats["height"], stats
        return stats

    def status(self) -> str:
        return self.page.inner_text("#status")

    def wait_status(self, text: str, timeout_ms: int = 60_000, before: str | None = None) -> str:
        """Wait until the message contains ``text`` (and, with ``before``, is a new message)."""
        self.page.wait_for_function(
            "([t, b]) => { const s = (document.querySelector('#status') || {}).innerText || '';"
            " return s.includes(t) && (b === null || s !== b); }", arg=[text, before], timeout=timeout_ms)
        return self.status()

    def rows(self) -> list[list[str]]:
        """The step table as the page shows it (Gradio's grid: ARIA rows and grid cells)."""
        rows = self.page.locator("#steps [role=row][data-index]")
        return [[c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()]
                for i in range(rows.count())]

    def press(self, button: str, expect: str, timeout_ms: int = 60_000) -> dict:
        """Press a button and wait for its new message and the picture of its result."""
        before = self.status()
        self.page.click(f"#{button}")
        self.wait_status(expect, timeout_ms, before)
        return self.rendered()

    def click_pixel(self, x: float, y: float, image_shape) -> None:
        """A click on image pixel (x, y) of the engine's image, wherever the page drew the picture."""
        box = self.page.locator("#picture img").bounding_box()
        height, width = image_shape[:2]
        self.page.mouse.click(box["x"] + (x + 0.5) * box["width"] / width,
                              box["y"] + (y + 0.5) * box["height"] / height)


def deepest(mask: np.ndarray, away_from: list[tuple[int, int]] = ()) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its border (and from ``away_from``)."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    for x, y in away_from:
        yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
        distance = np.where((yy - y) ** 2 + (xx - x) ** 2 < 64, 0, distance)
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(x), int(y)


def test_review_loop_in_chromium(server, browser, case, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1150}, accept_downloads=True)
    hosts: set[str] = set()
    context.on("request", lambda request: hosts.add(request.url.split("/")[2]))
    page = Page(context.new_page())
    page.page.goto(server["url"])
    opened = page.rendered(timeout_ms=120_000)
    assert opened["tinted"] + opened["edge"] == 0, "no mask before any prompt"
    scale = opened["width"] // case.image.shape[1]
    assert scale * case.image.shape[1] == opened["width"]
    assert "Click on the target" in page.status()

    # the clinician clicks on the target, then Start: the hint is applied, the agent proposes (amber)
    x, y = deepest(case.ground_truth)
    page.click_pixel(x, y, case.image.shape)
    assert f"Your prompt: positive click ({x},{y})" in page.wait_status("Your prompt")
    page.rendered()
    started = page.press("start", "Started from your positive click", SLOW_MS)
    assert "The agent proposes:" in page.page.inner_text("#proposal")
    assert started["proposal"] > 0, "the proposal is drawn in amber"
    rows = page.rows()
    assert len(rows) == 1 and rows[0][1:4] == ["clinician", "", "hint"], rows
    page.page.screenshot(path=str(ARTIFACTS / "01-start.png"), full_page=True)

    # Accept: the box is applied, the mask grows, the table says who proposed what and the Dice
    accepted = page.press("accept", "Accepted the agent's box")
    rows = page.rows()
    assert len(rows) == 2 and rows[1][1] == "agent" and rows[1][3] == "accept", rows
    assert float(rows[1][6]) > 0.85, rows  # Dice with the ground truth
    area = accepted["tinted"] + accepted["edge"]
    assert area > started["tinted"] + started["edge"]
    page.page.screenshot(path=str(ARTIFACTS / "02-after-accept.png"), full_page=True)

    # Continue until the agent stops; then Undo twice goes back exactly to the picture after Start
    page.press("continue", "Continued until")
    assert len(page.rows()) >= 3
    while len(page.rows()) > 1:
        count = len(page.rows())
        restored = page.press("undo", f"Undid step {count}")
        assert len(page.rows()) == count - 1
    assert restored["checksum"] == started["checksum"], "undo restores the mask and the proposal exactly"
    assert restored["tinted"] + restored["edge"] == started["tinted"] + started["edge"]

    # the agent proposes the same box again; Accept, then Finish: the result is accepted and downloadable
    again = page.press("accept", "Accepted the agent's box")
    assert again["tinted"] + again["edge"] == area
    page.press("finish", "Finished")
    with page.page.expect_download() as mask_download:
        page.page.click("#download-mask")
    mask_path = tmp_path / "mask.png"
    mask_download.value.save_as(mask_path)
    with page.page.expect_download() as log_download:
        page.page.click("#download-log")
    log_path = tmp_path / "trajectory.jsonl"
    log_download.value.save_as(log_path)

    from PIL import Image

    mask = np.asarray(Image.open(mask_path)) > 127
    assert mask.shape == case.image.shape[:2]
    assert dice(mask, case.ground_truth) == pytest.approx(float(page.rows()[-1][6]), abs=1e-3)
    shown = (again["tinted"] + again["edge"]) / scale**2  # markers hide a few mask pixels
    assert abs(shown - mask.sum()) < 0.1 * mask.sum(), (shown, mask.sum())
    episodes = read_episodes(log_path)
    finished = [e for e in episodes if e.end and e.end.get("status") == "finished"]
    assert len(finished) == 1 and finished[0].accepted
    assert [s.decision for s in finished[0].steps] == ["hint", "accept"]
    assert np.array_equal(finished[0].final_mask, mask)

    # click-to-mask round trip: a new session, then corrections (click + Override) until the new mask is shown
    page.click_pixel(x, y, case.image.shape)
    page.wait_status("Your prompt")
    previous = page.press("start", "Started from your positive click", SLOW_MS)
    times, clicked = [], [(x, y)]
    for _ in range(3):
        cx, cy = deepest(case.ground_truth, clicked)
        clicked.append((cx, cy))
        count = len(page.rows())
        began = time.perf_counter()
        page.click_pixel(cx, cy, case.image.shape)
        page.wait_status(f"positive click ({cx},{cy})")
        page.press("override", f"Applied your positive click ({cx},{cy})")
        shown = page.rendered(previous["src"])
        assert len(page.rows()) == count + 1
        times.append((time.perf_counter() - began) * 1000)
        previous = shown
        assert page.rows()[-1][3] == "override" or page.rows()[-1][3] == "place"
    print(f"\nclick-to-mask round trip in chromium (click, Override, new overlay decoded): median "
          f"{statistics.median(times):.0f} ms over {len(times)} clicks ({', '.join(f'{t:.0f}' for t in times)})")
    (ARTIFACTS / "round_trip_ms.txt").write_text(" ".join(f"{t:.1f}" for t in times) + "\n")

    assert hosts == {f"127.0.0.1:{server['port']}"}, f"the page asked other hosts: {hosts}"
    assert "Traceback" not in page.page.inner_text("body")
    context.close()


def test_errors_are_messages_in_the_page(server, browser):
    """Pressing buttons out of order shows a message, never a stack trace."""
    context = browser.new_context()
    page = Page(context.new_page())
    page.page.goto(server["url"])
    page.rendered(timeout_ms=120_000)
    page.page.click("#accept")
    assert "press Start first" in page.wait_status("⚠")
    page.page.click("#start")
    assert "starts from your prompt" in page.wait_status("starts from your prompt")
    assert "Traceback" not in page.page.inner_text("body")
    context.close()


def test_port_taken_is_one_clear_line(server):
    result = subprocess.run([sys.executable, "-m", "MedSAMAgentLib.cli", "app", "--port", str(server["port"])],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"port {server['port']} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
