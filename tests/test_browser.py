"""The web page in a real browser: `transferlab serve` in a subprocess, Debian's chromium driven by Playwright.

Screenshots go to test-output/ (repo root, gitignored) for a human to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_colour_run
from PIL import Image
from server_harness import running_server

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: install Debian's chromium "
                       "(`make test` runs scripts/ensure-chromium.sh, which does it as root)"),
]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_colour_run(tmp_path_factory.mktemp("browser"), epochs=15)


@pytest.fixture(scope="module")
def server_url(run_dir):
    with running_server(run_dir) as url:  # `python -m transferlab serve RUN --port FREE` on 127.0.0.1
        yield url


@pytest.fixture(scope="module")
def page(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        yield page
        browser.close()


@pytest.fixture
def red_photo(tmp_path) -> Path:
    """A 320x240 red picture with some texture, big enough to look like a photo in the preview."""
    rng = np.random.default_rng(7)
    pixels = np.clip(np.array((200, 40, 40)) + rng.normal(0, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "red-photo.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_uploaded_image_is_shown_with_its_predicted_class(page, server_url, red_photo):
    page.goto(server_url)
    page.wait_for_selector("#model-summary:has-text('3 classes')")
    page.set_input_files("#file", str(red_photo))
    page.wait_for_selector("#results li .label", timeout=30_000)
    labels = page.locator("#results .label").all_text_contents()
    assert labels[0] == "red" and sorted(labels) == ["blue", "green", "red"]
    assert page.locator("#preview").is_visible()
    assert "red-photo.jpg" in page.locator("#status").text_content()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "serve-page.png"), full_page=True)


def test_non_image_upload_shows_the_servers_reason(page, server_url, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a picture")
    page.goto(server_url)
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "not an image" in page.locator("#status").text_content()
    assert page.locator("#results li").count() == 0


def test_report_link_opens_the_run_report(page, server_url, run_dir):
    if not (run_dir / "report.html").is_file():
        pytest.skip("this run has no report.html (train does not write one yet), so there is no report page to open")
    page.goto(server_url)
    page.wait_for_selector("#report-link:visible")
    page.click("#report-link")
    page.wait_for_load_state("load")
    assert page.url.endswith("/report/")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "serve-report.png"), full_page=True)


@pytest.mark.parametrize(("test_is_validation", "split"), [(True, "validation"), (False, "test")])
def test_page_names_the_split_its_accuracy_was_measured_on(page, server_url, test_is_validation, split):
    def metrics_as(route):  # the same run, described as scored on validation images (no test folder) or not
        model = route.fetch().json()
        model["metrics"] = {**model["metrics"], "test_accuracy": 0.9, "test_is_validation": test_is_validation}
        route.fulfill(json=model)

    page.route("**/api/model", metrics_as)
    try:
        page.goto(server_url)
        page.wait_for_selector("#model-summary:has-text('3 classes')")
        assert page.locator("#model-summary").text_content().endswith(f", {split} accuracy 90.0%")
    finally:
        page.unroute("**/api/model")


def test_heatmap_toggle_shows_where_the_model_looked(page, server_url, red_photo):
    page.goto(server_url)
    page.wait_for_selector("#heatmap-toggle:visible")
    page.set_input_files("#file", str(red_photo))
    page.wait_for_selector("#results li .label", timeout=30_000)
    assert page.locator("#heatmap").is_hidden()
    page.check("#show-heatmap")
    page.wait_for_selector("#heatmap:visible", timeout=30_000)
    assert page.locator("#heatmap").get_attribute("src").startswith("data:image/png;base64,")
    assert page.locator("#heatmap").get_attribute("title").startswith("red ")
    page.screenshot(path=str(Path(__file__).resolve().parents[1] / "docs" / "explain-page.png"), full_page=True)
    page.uncheck("#show-heatmap")
    assert page.locator("#heatmap").is_hidden()
