"""`bloodcell data check`: every finding of the VOC reader as a table row plus a summary."""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bloodcell.data.sources import available_splits, load_dataset, read_spec, unlisted_images
from bloodcell.data.voc import KEPT, SKIPPED_FROM, SUPERSEDED, Finding, VOCDataset, unknown_classes
from bloodcell.errors import DatasetError, first_of
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
    """Every annotation (or one split's); without ``split``, also what the split lists get wrong: ids
    with no annotation, ids listed twice, and images in train and also in val or test."""
    dataset = load_dataset(root, split=split, class_names=class_names)  # a VOC folder or a dataset YAML
    findings = list(dataset.findings)
    if split is None:
        findings += _split_findings(root, class_names, dataset.records) + _nested_annotations(root)
    elif not dataset.records and not findings:  # as the whole-folder check says of it
        findings.append(_empty_split(split))
    return CheckReport(Path(root), split, len(dataset), dataset.box_counts(), findings)


def _nested_annotations(root: str | Path) -> list[Finding]:
    """XML files in subfolders of Annotations/ (a tool's per-batch folders): VOC reads Annotations/*.xml only,
    so their images would be left out of training without a word."""
    found = []
    sources = read_spec(root).sources
    for source in sources:
        folder = source.path / "Annotations"
        for xml in sorted(folder.rglob("*.xml")):
            inside = xml.relative_to(folder).parts[:-1]
            if not inside or any(part.startswith(".") for part in inside):  # top level; .ipynb_checkpoints, ...
                continue
            rel = xml.relative_to(source.path).as_posix()
            name = rel if len(sources) == 1 else f"{source.path.name}/{rel}"
            if (folder / xml.name).is_file():  # an older copy, perhaps: moving it up would replace the one read
                detail = f"{rel} is in a subfolder and Annotations/{xml.name} is read; this one is not"
            else:
                detail = f"{rel} is in a subfolder; only Annotations/*.xml are read: move it up to use it"
            found.append(Finding(name, None, "nested-annotation", detail, "not read"))
    return found


SPLIT_KINDS = ("duplicate-id", "missing-annotation")  # findings a split list causes, not an annotation


def _split_findings(root: str | Path, class_names: tuple[str, ...], records: list) -> list[Finding]:
    """What only the split lists get wrong (the whole-folder read, ``records``, already reported every
    annotation's faults)."""
    found, members = [], {}
    for name in available_splits(root):
        try:
            part = load_dataset(root, split=name, class_names=class_names, decode_images=False)
        except DatasetError as e:  # an unreadable split list: said, and the rest of the report still made
            found.append(Finding(f"ImageSets/Main/{name}.txt", None, "unreadable-split", str(e), "split not read"))
            continue
        # the other findings are the whole-folder read's again; these two exist only in a split list
        found += [
            replace(f, detail=f"split {name}: {f.detail}", action=SKIPPED_FROM + name if f.skips_image else f.action)
            for f in part.findings
            if f.kind in SPLIT_KINDS
        ]  # the whole-folder read still counts the image: only the split goes without it
        members[name] = {r.image_path.name for r in part.records}
        if not part.records and not part.findings:  # a list saved before it was filled: a split of nothing
            found.append(_empty_split(name))
    if unlisted := unlisted_images(root, class_names, records):  # forgotten when the lists were made: left out silently
        detail = f"{len(unlisted)} labelled images are in none of the split lists: {first_of(unlisted)}; "
        detail += "training and scoring by split leave them out"
        found.append(Finding("ImageSets/Main", None, "unlisted-image", detail, "none"))
    for scored in ("val", "test"):  # (trainval overlaps train and val by design)
        for image in sorted(members.get("train", set()) & members.get(scored, set())):
            detail = f"in both train and {scored}: {scored} would score an image the model learns from"
            found.append(Finding(image, None, "split-overlap", detail, "none"))
    return found


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


#: What images labelling no class exhaustively mean to commands that train or score on them.
UNKNOWN_EFFECT = (
    "they label no class exhaustively, so their counts are not scored or fitted and their unboxed cells not taught "
    "as background"
)


def findings_note(dataset: VOCDataset, unknown_effect: str = UNKNOWN_EFFECT) -> str | None:
    """For commands that read labels without listing their faults (train, val, calibrate, benchmark, data
    export): one line of how many the reader repaired or dropped and how to see them, and a second
    (``unknown_class_note``) when unknown classes left images without exhaustive classes. None when none."""
    found = [f for f in dataset.findings if not f.action.startswith(SUPERSEDED)]  # a later source's labels stand
    if not found:
        return None
    where = f"{dataset.root}{f' split {dataset.split}' if dataset.split else ''}"
    listed = f"`bloodcell data check {shlex.quote(str(dataset.root))}` lists them"
    fixed = [f for f in found if f.action != KEPT]
    prelabels = [f for f in found if f.kind == "unchecked-prelabel"]
    kept = [f for f in found if f.action == KEPT and f.kind != "unchecked-prelabel"]
    notes = []
    if fixed:
        notes.append(f"warning: {where}: {len(fixed)} label findings ({_by_kind(fixed)}) repaired or dropped; {listed}")
    if prelabels:  # used as they are, and the model would learn (and be scored on) its own boxes
        notes.append(
            f"warning: {where}: {len(prelabels)} annotation file{'s are' if len(prelabels) > 1 else ' is'} "
            "`bloodcell predict --voc` pre-labels that no labelling tool has saved since: the model learns and is "
            f"scored on its own boxes; correct them first (or remove their <source> once checked); {listed}"
        )
    if kept:
        notes.append(f"warning: {where}: {len(kept)} label findings ({_by_kind(kept)}) kept as they are; {listed}")
    return "\n".join(filter(None, [*notes, unknown_class_note(dataset, unknown_effect)]))


def unknown_class_note(dataset: VOCDataset, effect: str = UNKNOWN_EFFECT) -> str | None:
    """One line when boxes of unknown classes left images labelling no class exhaustively: how many, which
    names, what that does (``effect``), and the fix (a source's aliases). None when there are none."""
    unknown = unknown_classes(dataset.findings)
    if not unknown:
        return None
    names = Counter(name for found in unknown.values() for name in found)
    shown = ", ".join(f"{name or '(no <name>)'!s} {n}" for name, n in names.most_common(4))
    split = f" split {dataset.split}" if dataset.split else ""
    return (
        f"warning: {dataset.root}{split}: {len(unknown)} of {len(dataset.records)} images have boxes of classes "
        f"that are none of {', '.join(dataset.class_names)} ({shown}{', ...' if len(names) > 4 else ''}): {effect}; "
        "name those classes in a dataset YAML source's aliases ({Neutrophil: WBC}, null: no cell)"
    )


def skipped_note(dataset: VOCDataset, level: str = "error", outcome: str = "the results cover") -> str | None:
    """One line for commands whose results cover a split (train, val, calibrate): which listed images were
    left out, so the scores or the fit are over fewer images than the split names. None when none was."""
    skipped = [f for f in dataset.findings if f.skips_image]
    if not skipped:
        return None
    split = f" split {dataset.split}" if dataset.split else ""
    names = first_of([f.file for f in skipped])
    which = "listed" if dataset.split else "labelled"  # no split list: the folder's annotations named them
    return (
        f"{level}: {dataset.root}{split}: {len(skipped)} {which} images left out ({_by_kind(skipped)}: {names}); "
        f"{outcome} the other {len(dataset.records)}"
    )


def _empty_split(name: str) -> Finding:
    detail = f"ImageSets/Main/{name}.txt lists no image: training, scoring or exporting it has nothing to use"
    return Finding(f"ImageSets/Main/{name}.txt", None, "empty-split", detail, "none")
