"""Render shell commands and their real output as a terminal-style PNG (README's watch screenshot).

    python tools/terminal_png.py docs/watch.png "bloodcell watch /tmp/w/cam --out /tmp/w/out --once" \
        "cat /tmp/w/out/counts.csv"

Each command runs in a shell here (stdout and stderr as a terminal shows them); its output is drawn
below a green "$ command" line in DejaVu Sans Mono, so the picture is what the commands printed.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BACKGROUND, TEXT, PROMPT = (30, 30, 30), (235, 235, 235), (140, 220, 120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("commands", nargs="+")
    p.add_argument("--size", type=int, default=16)
    args = p.parse_args()
    lines: list[tuple[str, tuple[int, int, int]]] = []
    for command in args.commands:
        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        lines.append((f"$ {command}", PROMPT))
        lines += [(line, TEXT) for line in (done.stdout + done.stderr).rstrip("\n").splitlines()]
    font = ImageFont.truetype(FONT, args.size)
    step = int(args.size * 1.45)
    width = max(int(font.getlength(text)) for text, _ in lines) + 20
    im = Image.new("RGB", (width, step * len(lines) + 16), BACKGROUND)
    draw = ImageDraw.Draw(im)
    for i, (text, colour) in enumerate(lines):
        draw.text((10, 8 + i * step), text, fill=colour, font=font)
    im.save(args.out)


if __name__ == "__main__":
    main()
