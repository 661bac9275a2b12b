"""`bloodcell data check`: every finding of the VOC reader as a table row plus a summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bloodcell.data.sources import load_dataset
from bloodcell.data.voc import Finding
from bloodcell.types import CLASS_NAMES


@dataclass
class CheckReport:
    root: Path
    split: str | None
    images: int
    boxes: dict[str, int]
    findings: list[Finding]

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "split": self.split,
            "images": self.images,
            "boxes_after_repair": self.boxes,
            "findings": [asdict(f) for f in self.findings],
            "summary": dict(Counter(f.kind for f in self.findings)),
        }


def check_dataset(
    root: str | Path, split: str | None = None, class_names: tuple[str, ...] = CLASS_NAMES
) -> CheckReport:
    dataset = load_dataset(root, split=split, class_names=class_names)  # a VOC folder or a dataset YAML
    return CheckReport(Path(root), split, len(dataset), dataset.box_counts(), dataset.findings)


def format_findings(report: CheckReport) -> str:
    rows = [("file", "object", "kind", "detail", "action")]
    rows += [(f.file, "-" if f.object is None else str(f.object), f.kind, f.detail, f.action) for f in report.findings]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows] if report.findings else []
    kinds = Counter(f.kind for f in report.findings)
    boxes = ", ".join(f"{n} {name}" for name, n in report.boxes.items())
    summary = f"{report.images} images, {boxes} after repair; "
    summary += f"{len(report.findings)} findings" + (f" ({_by_kind(report.findings)})" if kinds else "")
    return "\n".join([*lines, summary])


def _by_kind(findings: list[Finding]) -> str:
    """ "1 degenerate-box, 2 near-duplicate": how many findings of each kind."""
    return ", ".join(f"{n} {k}" for k, n in sorted(Counter(f.kind for f in findings).items()))


def findings_note(dataset) -> str | None:
    """One line for commands that read labels without listing their faults (train, val): how many the
    reader repaired or dropped, and how to see them. None when there are none."""
    if not dataset.findings:
        return None
    split = f" split {dataset.split}" if dataset.split else ""
    return (
        f"warning: {dataset.root}{split}: {len(dataset.findings)} label findings ({_by_kind(dataset.findings)}) "
        f"repaired or dropped; `bloodcell data check {dataset.root}` lists them"
    )
