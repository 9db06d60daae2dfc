"""`bench report --screenshot`: render the HTML report to a PNG with headless Chromium (a check for a person)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .report_input import ReportError

TALL = 16000  # window height of a whole-page screenshot, cropped afterwards (Chromium's limit is ~16k)
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    exe = next((shutil.which(c) for c in CHROMIUMS if shutil.which(c)), None)
    if exe is None:
        raise ReportError(f"--screenshot needs Chromium on PATH (looked for {', '.join(CHROMIUMS)}); "
                          f"on Debian: apt-get install chromium")
    return exe


def parse_size(size: str) -> list[int]:
    """'1400' -> [1400] (whole page), '1400,3000' -> [1400, 3000] (fixed window)."""
    parts = str(size).split(",")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ReportError(f"bad --screenshot-size {size!r}: give W (whole page) or W,H in pixels, e.g. 1400 or 1400,3000")
    return [int(p) for p in parts]


def screenshot(html_path: Path, png_path: Path, size: str = "1400") -> Path:
    """Render the HTML report to a PNG with headless Chromium (a check for a person; not needed by tests or CI).

    `size` is "W,H" for a fixed window, or "W" for the whole page: rendered in a window TALL pixels high
    and cropped below the last non-white row.
    """
    parts = parse_size(size)
    whole = len(parts) == 1
    exe = find_chromium()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--hide-scrollbars", f"--screenshot={Path(png_path).resolve()}",
               f"--window-size={parts[0]},{TALL if whole else parts[1]}", Path(html_path).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not Path(png_path).is_file():
        raise ReportError(f"chromium made no screenshot (exit {proc.returncode}): {proc.stderr[-500:]}")
    if whole:
        from PIL import Image

        with Image.open(png_path) as im:
            im.load()
        ink = im.convert("L").point(lambda v: 255 if v < 250 else 0).getbbox()
        im.crop((0, 0, im.width, min(im.height, (ink[3] if ink else 0) + 30))).save(png_path)
    return Path(png_path)
