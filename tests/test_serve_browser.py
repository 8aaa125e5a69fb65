"""The comparison page in a real browser: headless Chromium (the OS package) driven by Selenium.

The server runs in this process on a free 127.0.0.1 port. The test uploads a small
image through the page's file input, waits for the four panels and checks the numbers
they show against the server's JSON; a bad file must give a message on the page.

Skipped, with the reason, when no ``chromium`` + ``chromedriver`` are installed
(``apt-get install chromium chromium-driver``; ``.ci/run`` does it).

``VARICODEC_SERVE_SCREENSHOT=docs/serve.png`` also codes Matplotlib's Grace Hopper
sample photo with the bundled model and saves a screenshot of the page there.
"""

import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import load_benchmark
from PIL import Image

pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

from varicodec.serve.app import create_app  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
ROOT = Path(__file__).resolve().parents[1]


def _browser() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if os.path.exists("/usr/lib/chromium/chromedriver")
        else None)
    if chromium is None or driver is None:
        pytest.skip("no chromium + chromedriver on this machine "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    return chromium, driver


class Server:
    """uvicorn serving ``app`` on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 60 and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def job(self, job_id: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/jobs/{job_id}", timeout=30) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1360,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    d = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield d
    d.quit()


def _digits(text: str) -> int:
    return int(re.sub(r"\D", "", text))


def _compare_on_page(browser, server: Server, image: Path, timeout_s: float) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "go").is_enabled())
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, timeout_s).until(
        lambda d: d.execute_script("return document.body.dataset.state") == "done"
        or d.find_element(By.ID, "error").is_displayed())
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    job = browser.execute_script("return state.job")
    result = server.job(job)["result"]
    cards = browser.find_elements(By.CSS_SELECTOR, "#panels .panel")
    assert [c.get_attribute("data-codec") for c in cards] == ["ours", "jpeg", "webp", "avif"]
    for card, p in zip(cards, result["panels"]):
        field = {f.get_attribute("data-field"): f.text
                 for f in card.find_elements(By.CSS_SELECTOR, "dd[data-field]")}
        assert _digits(field["bytes"]) == p["bytes"] > 0
        assert field["bpp"] == f"{p['bpp']:.3f} bpp"
        assert field["psnr_db"] == f"{p['psnr_db']:.2f} dB"
        thumb = card.find_element(By.CSS_SELECTOR, ".thumb img")
        WebDriverWait(browser, 10).until(
            lambda d, t=thumb: d.execute_script("return arguments[0].naturalWidth", t) > 0)
    # the swipe viewer shows the original and ours, decoded by the browser
    assert browser.execute_script("return document.getElementById('img-right').src") \
        .endswith(f"/api/jobs/{job}/files/ours.png")
    gating = browser.find_element(By.ID, "gating")
    assert gating.is_displayed()
    saved = gating.find_element(By.CSS_SELECTOR, "[data-field=encoder_saved]").text
    assert saved == f"{result['gating']['encoder']['saved'] * 100:.1f} % fewer FLOPs"
    return result


def test_page_compares_an_upload(browser, tmp_path):
    from varicodec.demo import synthetic_image

    model = load_benchmark("fuzz_format").tiny_model("hyperprior-ecgbm", 0)
    path = tmp_path / "small.png"
    Image.fromarray(synthetic_image(96, 64)).save(path)
    with Server(create_app(model)) as server:
        result = _compare_on_page(browser, server, path, timeout_s=120)
        assert result["image"] == {"width": 96, "height": 64, "name": "small.png"}

        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        # the target chooser and a sample: everyone at the size of JPEG at quality 50
        browser.find_element(By.CSS_SELECTOR, "input[name=target][value=jpeg]+span").click()
        browser.find_element(By.CSS_SELECTOR, "[data-sample=synthetic]").click()
        WebDriverWait(browser, 120).until(
            lambda d: d.execute_script("return document.body.dataset.state") == "done"
            and d.find_element(By.CSS_SELECTOR, ".summary .name").text == "synthetic")
        jpeg = browser.find_element(By.CSS_SELECTOR, ".panel[data-codec=jpeg] .setting")
        assert jpeg.text == "quality 50"
        assert "the size of JPEG at quality 50" in browser.find_element(By.ID, "summary").text

        # our quality with refined latents: the box is there for this model, the file says so
        browser.find_element(By.CSS_SELECTOR, "input[name=target][value=quality]+span").click()
        browser.find_element(By.ID, "refine").click()
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 300).until(
            lambda d: d.execute_script("return document.body.dataset.state") == "done"
            and "refined" in d.find_element(By.ID, "summary").text)
        ours = browser.find_element(By.CSS_SELECTOR, ".panel[data-codec=ours] .setting")
        assert ours.text.endswith("refined (50 steps)")

        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert browser.find_element(By.ID, "error").text.startswith("notes.png: not an image")
        # the results on show stay usable: their downloads still answer
        link = browser.find_element(By.CSS_SELECTOR, ".panel[data-codec=ours] .downloads a")
        assert link.get_attribute("href").endswith("/files/ours.vcd?download=1")
        with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as r:
            assert r.status == 200 and len(r.read()) > 0


def test_screenshot_for_the_docs(browser, tmp_path):
    """Only when asked: the bundled model on a real photo, saved as a PNG for the README."""
    out = os.environ.get("VARICODEC_SERVE_SCREENSHOT")
    if not out:
        pytest.skip("set VARICODEC_SERVE_SCREENSHOT=docs/serve.png to save a screenshot")
    from matplotlib import cbook

    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with Server(create_app(None)) as server:
        _compare_on_page(browser, server, photo, timeout_s=300)
        for _ in range(3):  # the page reflows to the viewport: resize until it fits
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": 1360, "height": height, "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.5)
        path = ROOT / out if not os.path.isabs(out) else Path(out)
        browser.save_screenshot(str(path))
    with Image.open(path) as im:
        assert im.width >= 1300
