"""Screenshots of the playground for the docs, at desktop and phone widths.

The HTTP server runs on the stub model (no weights, windows a little apart) over a temporary copy of the demo
library; headless Chromium (Debian's, as in tests/browser) speaks one clip so the timings
and its waveform show, then saves full-page PNGs, reduced to a small palette.

    python scripts/playground_screenshots.py            # writes docs/playground-{desktop,phone}.png
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

logger = logging.getLogger("playground_screenshots")

SAMPLE_TEXT = ("Chatterbox plays this sentence while it is still being made. "
               "The waveform below shows every window as it joined the clip.")
# Each stub window waits this long, so the timings show a stream (first audio before the last).
WINDOW_DELAY_S = 0.3
# Colours kept in the saved PNGs: the page is flat colour, so a palette loses nothing visible.
PALETTE_COLOURS = 64
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


def small_png(png: bytes) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(PALETTE_COLOURS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def shoot(browser, url: str, viewport: dict[str, int], path: Path) -> None:
    from tests.browser.chromium import open_page, speak_and_wait, wait_for_voices

    context, page, watch = open_page(browser, url, viewport=viewport)
    try:
        wait_for_voices(page)
        speak_and_wait(page, SAMPLE_TEXT)
        path.write_bytes(small_png(page.screenshot(full_page=True)))
        if watch.errors:
            raise RuntimeError(f"the page threw: {watch.errors}")
    finally:
        context.close()
    logger.info("wrote %s (%d bytes)", path, path.stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import server
    from chatterbox_worker.testing.demo_library import copy_demo_library
    from chatterbox_worker.testing.stub_worker import stub_worker
    from tests.browser.chromium import browser_missing, launched
    from tests.http_servers import SlowStreamModel, running_app, wait_ready

    reason = browser_missing()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory() as scratch:
        worker = stub_worker(copy_demo_library(Path(scratch) / "library"), model=SlowStreamModel(WINDOW_DELAY_S))
        with running_app(server.create_app(lambda: worker)) as url, launched() as browser:
            wait_ready(url)
            for name, viewport in VIEWPORTS.items():
                shoot(browser, url, viewport, args.out / f"playground-{name}.png")


if __name__ == "__main__":
    main()
