"""The one palette for class colours everywhere: annotated images and videos, the HTML report,
the web page (via /api/v1/model) and dataset plots.

A top-level module, not part of ``app``: ``data`` (dataset plots) uses it too, and ``data`` may
not import ``app`` (tests/test_layering.py).
"""

from __future__ import annotations

#: RBC red, WBC blue, platelets amber, readable on pink-purple stains. Other classes take
#: FALLBACK colours by class index.
COLORS = {"RBC": (220, 40, 40), "WBC": (30, 90, 230), "Platelets": (240, 170, 0)}
FALLBACK = [(0, 160, 120), (160, 0, 160), (90, 90, 90)]


def class_color(name: str, index: int) -> tuple[int, int, int]:
    """RGB colour of class ``name`` (``index``: its position in the model's class list)."""
    return COLORS.get(name, FALLBACK[index % len(FALLBACK)])


def class_hex(name: str, index: int) -> str:
    """``class_color`` as a CSS/matplotlib colour string, e.g. ``#dc2828``."""
    return "#{:02x}{:02x}{:02x}".format(*class_color(name, index))
