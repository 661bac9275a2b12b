"""Plots for runs and validations (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

from bloodcell.runtime.counting import class_thresholds

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from bloodcell.atomic import write_bytes

if TYPE_CHECKING:
    from bloodcell.engine.metrics import DetectionMetrics

plt.switch_backend("Agg")  # its C extension loads now, not on a run's first plot, where a stop can break its import


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return path


def plot_training(rows: list[dict], path: str | Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] for r in rows]
    for key in ("loss_cls", "loss_box", "loss"):
        ax1.plot(epochs, [r[key] for r in rows], label=key)
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss")
    ax1.legend(loc="best", framealpha=0.6)  # "best": away from the curves (a short run's lines fill the corners)
    val = [(r["epoch"], r["val_map50"], r.get("val_coco_ap50_95")) for r in rows if r.get("val_map50") is not None]
    if val:
        ax2.plot([v[0] for v in val], [v[1] for v in val], "o-", label="VOC mAP@0.5")
        ax2.plot([v[0] for v in val], [v[2] for v in val], "s-", label="COCO AP50:95")
        ax2.legend()
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):  # epochs are whole numbers: no 1.2, 1.4 ticks on a short run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, Path(path))


def plot_pr_curves(metrics: DetectionMetrics, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, curve in metrics.curves.items():
        if len(curve.recall):
            ax.plot(curve.recall, curve.precision, label=f"{name} AP50 {metrics.voc_ap50[name]:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall @ IoU 0.5 (mAP {metrics.voc_map50:.3f})")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_confusion(metrics: DetectionMetrics, path: str | Path) -> Path:
    m = metrics.confusion
    labels = [*metrics.class_names, "background"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(np.log1p(m), cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    points = "/".join(f"{c:.2f}" for c in class_thresholds(metrics.conf, len(metrics.class_names)))
    ax.set_title(f"confusion at operating points {points}, IoU 0.5")
    return _save(fig, Path(path))
