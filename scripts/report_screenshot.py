"""Render a study's report.html in headless Chromium at 1280×800: the DOM as the browser built it, and a PNG of the
first screen. Regenerates the README's screenshot (docs/report_first_screen.png) from a `layerprune demo` root:

    layerprune demo --out /tmp/demo && python scripts/report_screenshot.py /tmp/demo/report.html

Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it). The browser gets a fresh profile,
no network features, and loads only the local file (the report is self-contained).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

WINDOW = (1280, 800)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "report_first_screen.png"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--window-size={WINDOW[0]},{WINDOW[1]}"]


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def render(html: Path, png: Path | None = None, timeout: float = 120) -> str:
    """The DOM Chromium built from `html` (--dump-dom); with `png`, also a screenshot of the first 1280×800."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed: apt-get install -y chromium")
    url = Path(html).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=True)
        if png is not None:
            with tempfile.TemporaryDirectory() as shots:
                shot = Path(shots) / "shot.png"
                subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, timeout=timeout, check=True)
                Path(png).parent.mkdir(parents=True, exist_ok=True)
                _save_small(shot, Path(png))
    return dom.stdout


def _save_small(src: Path, dst: Path) -> None:
    """Re-encode as an 8-bit palette PNG (a report screenshot has few colours): well under 300 KB."""
    from PIL import Image

    img = Image.open(src).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    tmp = dst.with_suffix(".tmp.png")
    img.save(tmp, optimize=True)
    tmp.replace(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="a study's report.html")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    args = ap.parse_args()
    render(args.html, args.out)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
