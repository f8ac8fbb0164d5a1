"""docs/notebook-card.png: the card a trained Classifier shows in Jupyter, from a real run, for the README.

    .venv/bin/python scripts/make_readme_card.py

Trains feature extraction on ants vs bees from ../shared (as docs/tutorial.ipynb does: 40 images a class,
20 epochs) into runs/readme-card, with a fresh feature cache so that the timings are a first run's, then screenshots `classifier._repr_html_()` in headless chromium (Debian's
/usr/bin/chromium, as tests/test_browser.py; scripts/ensure-chromium.sh installs it).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERLAB_SHARED", ROOT.parent / "shared"))
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "docs" / "notebook-card.png"
PAGE = """<!doctype html><html><head><meta charset="utf-8"></head>
<body style="margin:0;padding:12px;background:white">{card}</body></html>"""


def train_card_run():
    import transferlab

    data = SHARED / "datasets" / "hymenoptera"
    if not data.is_dir():
        sys.exit(f"{data} not found: this script trains on ../shared's hymenoptera (set TRANSFERLAB_SHARED)")
    os.chdir(ROOT)  # the card shows the run folder relative to the working directory, as in a notebook
    with tempfile.TemporaryDirectory() as cache:
        return transferlab.train(data, strategy="extract", split={"max_per_class": 40}, epochs=20,
                                 out=Path("runs/readme-card"), trunk={"cache_dir": cache}, verbose=0)


def screenshot(html: str, path: Path) -> Path:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} not found: run scripts/ensure-chromium.sh (as root) first")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1020, "height": 600}, device_scale_factor=1)
        page.set_content(PAGE.format(card=html), wait_until="load")
        page.locator(".transferlab-card").screenshot(path=str(path))
        browser.close()
    return path


if __name__ == "__main__":
    classifier = train_card_run()
    print(f"wrote {screenshot(classifier._repr_html_(), OUT)} from {classifier.run_dir}")
