"""Open an `erasure eval` report in headless Chromium, screenshot it, and check that it shows the
summary table and the image grids (the DOM Chromium rendered, not just the file text).

    python benchmarks/report_screenshot.py out/no-circle/report/report.html [--png shot.png]
    python benchmarks/report_screenshot.py runs/bench/report.html --bench [--png shot.png]

`--bench` checks an `erasure bench` report instead: every method (one radar each) has a row in
each of the six dimension tables.

Needs a Chromium binary (Debian: apt-get install chromium). Exits non-zero when the rendered
page lacks the table or the grids.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("report", type=Path)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=2200)
    p.add_argument("--bench", action="store_true", help="check an erasure bench report (six dimensions per method)")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        raise SystemExit("no Chromium found: apt-get install chromium")
    url = args.report.resolve().as_uri()
    png = args.png or args.report.with_suffix(".png")
    with tempfile.TemporaryDirectory() as profile:
        common = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}"]
        subprocess.run([*common, f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
        dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout
    rows = len(re.findall(r"<tr>", dom))
    images = len(re.findall(r"<img ", dom))
    ok = png.exists() and png.stat().st_size > 10_000 and rows >= 2 and images >= 2
    missing = bench_missing(dom) if args.bench else []
    ok = ok and not missing
    print(f"screenshot {png} ({png.stat().st_size if png.exists() else 0} bytes); rendered table rows: {rows}, "
          f"images: {images} -> {'OK' if ok else 'MISSING ' + ('; '.join(missing) or 'table or grids')}")
    sys.exit(0 if ok else 1)


def bench_missing(dom: str) -> list[str]:
    """What an erasure bench report lacks: a dimension section, or a method's row in one."""
    dimensions = ("faithfulness", "alignment", "pinpoint", "multilingual", "attack", "efficiency")
    methods = re.findall(r'alt="radar ([^"]+)"', dom)
    missing = [] if methods else ["radar charts"]
    for i, d in enumerate(dimensions):
        start = dom.find(f'<h2 id="{d}">')
        if start < 0:
            missing.append(f"section {d}")
            continue
        end = dom.find("<h2", start + 1)
        section = dom[start:end if end > 0 else len(dom)]
        missing += [f"{m} in {d}" for m in methods if f"<td>{m}</td>" not in section]
    if not missing:
        print(f"bench report: {len(methods)} methods ({', '.join(methods)}) x {len(dimensions)} dimensions rendered")
    return missing


if __name__ == "__main__":
    main()
