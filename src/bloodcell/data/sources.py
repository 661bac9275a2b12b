"""Where the dataset comes from: --data, else $BLOODCELL_DATA, else the user cache.

``--data`` is a Pascal VOC folder or a dataset YAML that stacks several VOC folders::

    sources:                       # later sources override earlier ones, per image id
      - path: BCCD                 # relative to this file
        exhaustive: [WBC]          # classes whose every cell has a box (others: missing labels)
      - path: BCCD-dense
        exhaustive: [RBC, WBC, Platelets]
      - path: our-lab
        aliases: {Neutrophil: WBC, Lymphocyte: WBC, Debris: null}   # XML class -> class (null: not a cell)
    splits: {train: train, val: val, test: test}   # optional: split name -> ImageSets/Main file
    aliases: {Monocyte: WBC}                       # optional: every source's (a source's own win)

A plain VOC folder is one source with every class exhaustive.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from bloodcell.errors import DatasetError
from bloodcell.types import CLASS_NAMES, canonical_class_name, find_class

if TYPE_CHECKING:
    from bloodcell.data.voc import Finding, VOCDataset

YAML_SUFFIXES = (".yaml", ".yml")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bloodcell"


def default_data_root() -> Path:
    return cache_dir() / "BCCD"


def resolve_data_root(path: str | os.PathLike | None = None) -> Path:
    """The dataset folder or YAML to use: an explicit path wins, then BLOODCELL_DATA, then the cache."""
    if path:
        return Path(path)
    env = os.environ.get("BLOODCELL_DATA")
    if env:
        return Path(env)
    return default_data_root()


@dataclass(frozen=True)
class Source:
    path: Path
    exhaustive: tuple[str, ...]  # class names labelled exhaustively in this source
    #: (XML class name, class) pairs for names the reader does not know (a WBC subtype); class None: not a cell
    aliases: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """A stack of VOC folders; ``splits`` maps a split name to each folder's ImageSets/Main file."""

    file: Path | None
    sources: tuple[Source, ...]
    splits: dict[str, str]

    def split_file(self, split: str) -> str:
        return self.splits.get(split, split)


STANDARD_SPLITS = ("train", "val", "test")
ALL_SPLIT = "all"  # the one pseudo-split of a dataset without split files (every annotation)


def available_splits(root: str | os.PathLike) -> list[str]:
    """The standard splits whose ImageSets/Main file the VOC folder (or any source of the dataset YAML)
    has, in order; empty when it has none."""
    spec = read_spec(root)
    for key in spec.splits:  # a misspelt key ("trian") would leave its split unread, and nothing said
        near = difflib.get_close_matches(key, STANDARD_SPLITS, n=1, cutoff=0.6)
        # VOC's own trainval, and keys beside a split that is there anyway (test2 beside test.txt), are meant
        if key not in (*STANDARD_SPLITS, "trainval") and near and not _has_list(spec, near[0]):
            raise DatasetError(
                f"{spec.file}: splits: '{key}' is not a split bloodcell reads by itself (did you mean '{near[0]}'?); "
                "fix the key (a split of another name is read only with --split NAME)"
            )

    named = [s for s in spec.splits if not _has_list(spec, s)]
    if named:  # a split the YAML names on purpose is not silently left out
        files = ", ".join(f"ImageSets/Main/{spec.split_file(s)}.txt" for s in named)
        raise DatasetError(f"{spec.file}: splits {named} name {files}, which no source has")
    return [s for s in STANDARD_SPLITS if _has_list(spec, s)]


def _has_list(spec: DatasetSpec, split: str) -> bool:
    """Whether any source has ``split``'s list file; one that is a folder is refused (not "no such split")."""
    file = f"{spec.split_file(split)}.txt"
    for src in spec.sources:
        if (src.path / "ImageSets" / "Main" / file).is_dir():
            raise DatasetError(f"{src.path / 'ImageSets' / 'Main' / file}: is a folder, where a split list goes")
    return any((src.path / "ImageSets" / "Main" / file).is_file() for src in spec.sources)


def _source_order_findings(
    spec: DatasetSpec, replaced: Counter[tuple[Path, Path]], read: dict[Path, int], kept: set[Path], whole: bool
) -> list[Finding]:
    """A later source's labels win, so a YAML listing dense labels before sparse ones uses the sparse ones,
    silently: said when a source boxing fewer classes exhaustively replaces one boxing more, and when
    every image a source labels is labelled again later (its labels are never used)."""
    from bloodcell.data.voc import Finding

    exhaustive = {s.path: set(s.exhaustive) for s in spec.sources}
    file = spec.file.name if spec.file else ""
    found, said = [], set()
    for (earlier, later), n in replaced.items():
        if exhaustive[later] < exhaustive[earlier]:  # a strict subset: the later labels are the sparser ones
            lost = ", ".join(sorted(exhaustive[earlier] - exhaustive[later]))
            detail = (
                f"{later.name}'s labels replace {earlier.name}'s on {n} images, though {earlier.name} boxes more "
                f"classes exhaustively ({lost}); the later source wins: list {earlier.name} after it if its labels "
                "should count"
            )
            found.append(Finding(file, None, "source-order", detail, "none"))
            said.add(earlier)
    for source in spec.sources if whole else ():  # (one split's read: the source may hold other splits' images)
        if read.get(source.path) and source.path not in kept and source.path not in said:
            detail = f"every image {source.path.name} labels is labelled again by a later source: its labels are unused"
            found.append(Finding(file, None, "unused-source", detail, "none"))
    return found


def unlisted_images(
    root: str | os.PathLike, class_names: tuple[str, ...] = CLASS_NAMES, records: list | None = None
) -> list[str]:
    """The labelled image files of the whole folder (or YAML) that no list in any source's ImageSets/Main
    names (train, val, test, trainval, a lab's own): forgotten when the lists were made, they are in no
    split's training or scores. Empty without a train, val or test list (every command then reads them all).
    ``records``: the whole folder's, where the caller has read them already."""
    from bloodcell.data.voc import read_split_ids

    spec = read_spec(root, class_names)
    if not available_splits(root):  # no train/val/test list: every command reads the whole folder
        return []
    listed: set[str] = set()
    for source in spec.sources:
        for file in (source.path / "ImageSets" / "Main").glob("*.txt"):
            with contextlib.suppress(DatasetError):  # an unreadable list is data check's own finding
                listed.update(read_split_ids(source.path, file.stem))
    if records is None:
        records = load_dataset(root, None, class_names=class_names, decode_images=False).records
    return sorted(r.image_path.name for r in records if r.image_id not in listed)


def is_spec_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def _class_name(name: str, class_names: tuple[str, ...]) -> str:
    """A class as a YAML names it, spelled as the XML reader accepts it ("wbc", " Platelet ")."""
    index = find_class(name, class_names)
    return name if index is None else class_names[index]


def _aliases(raw: object, class_names: tuple[str, ...], where: str) -> tuple[tuple[str, str | None], ...]:
    """A source's ``aliases`` mapping, checked: each name is one the reader would not know, each class is one
    of ``class_names`` (in any spelling the reader accepts) or null."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: 'aliases' must map XML class names to classes, e.g. {{Neutrophil: WBC}}")
    pairs: list[tuple[str, str | None]] = []
    for name, target in raw.items():
        if isinstance(name, bool):  # YAML 1.1 reads an unquoted yes/no/on/off as true/false
            raise DatasetError(f"{where}: aliases: YAML read a name as {name}: quote it ('NO': WBC)")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{where}: aliases: {name!r} is not a class name as an XML writes it")
        if (known := find_class(name, class_names)) is not None:  # the reader takes it as that class already
            raise DatasetError(f"{where}: aliases: {name!r} is read as {class_names[known]!r} already")
        if target is not None and not isinstance(target, str):
            raise DatasetError(f"{where}: aliases: {name!r} maps to {target!r}; expected a class name or null")
        cls = None if target is None else _class_name(target, class_names)
        if cls is not None and cls not in class_names:
            raise DatasetError(
                f"{where}: aliases: {name!r} maps to {target!r}, which is not among {list(class_names)} "
                "(null: boxes of something that is not a cell to count)"
            )
        same = [other for other, c in pairs if canonical_class_name(other) == canonical_class_name(name) and c != cls]
        if same:  # the reader matches names as it matches classes: case, spaces, '_' and '-' aside
            raise DatasetError(f"{where}: aliases: {same[0]!r} and {name!r} are one name to the reader, two classes")
        pairs.append((name, cls))
    return tuple(pairs)


def _unused_aliases(spec: DatasetSpec, names_read: set[str]) -> list:
    """A finding per alias that no <name> of the sources' XML uses (every folder read whole): a typo'd key
    leaves the name it meant unknown, and that name's images without exhaustive classes."""
    from bloodcell.data.voc import Finding

    names = dict.fromkeys(name for source in spec.sources for name, _ in source.aliases)
    where = spec.file.name if spec.file else "aliases"
    detail = "aliases {!r}: no <name> in the sources' annotations reads so (a typo of the name it meant?)"
    return [
        Finding(where, None, "unused-alias", detail.format(name), "none")
        for name in names
        if canonical_class_name(name) not in names_read
    ]


def _merged_aliases(
    shared: tuple[tuple[str, str | None], ...], own: tuple[tuple[str, str | None], ...]
) -> tuple[tuple[str, str | None], ...]:
    """The file's aliases, then the source's: a name both give (in any spelling) takes the source's class."""
    mine = {canonical_class_name(name) for name, _ in own}
    return tuple(pair for pair in shared if canonical_class_name(pair[0]) not in mine) + own


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last, silently: a source's
    second ``path`` would replace its first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the mapping's own keys: a merged anchor's (<<: *d) may be overridden
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a list or mapping as a key: the base class says "found unhashable key"
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (each key once per mapping)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_spec(path: str | os.PathLike, class_names: tuple[str, ...] = CLASS_NAMES) -> DatasetSpec:
    """Parse a dataset YAML (or wrap a plain VOC folder); every fault is a DatasetError naming the key."""
    from bloodcell.data.voc import check_root  # voc reads this module's defaults when a folder is missing

    path = Path(path)
    if not is_spec_file(path):
        return DatasetSpec(None, (Source(path, tuple(class_names)),), {})
    try:
        # bytes: YAML reads UTF-8 and, by their byte-order mark, UTF-16 files (PowerShell's `>` writes those)
        doc = yaml.load(path.read_bytes(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset file not found") from None
    except yaml.reader.ReaderError as e:  # bytes that are no UTF-8 (a Latin-1 path in it): said as such
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.position}); save it as UTF-8") from None
    except yaml.YAMLError as e:  # where, as an editor shows it: "line 3, column 9: expected ',' or ']'"
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DatasetError(f"{path}: cannot read dataset YAML: {where}{problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read dataset YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a mapping with 'sources'")
    unknown = set(doc) - {"sources", "splits", "aliases"}
    if unknown:
        raise DatasetError(
            f"{path}: unknown keys {sorted(unknown)}; expected 'sources' and optional 'splits' and 'aliases'"
        )
    # names every source shares (a lab's own); a source's own aliases add to them and win
    shared = _aliases({} if doc.get("aliases") is None else doc["aliases"], class_names, f"{path}")
    raw_sources = doc.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise DatasetError(f"{path}: 'sources' must be a non-empty list of {{path, exhaustive}}")
    sources = []
    for i, item in enumerate(raw_sources):
        where = f"{path}: sources[{i}]"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise DatasetError(f"{where}: expected a mapping with a 'path' string")
        unknown = set(item) - {"path", "exhaustive", "aliases"}
        if unknown:
            raise DatasetError(f"{where}: unknown keys {sorted(unknown)}; expected 'path', 'exhaustive', 'aliases'")
        folder = Path(os.path.expanduser(os.path.expandvars(item["path"])))
        if not folder.is_absolute():
            folder = path.parent / folder
        exhaustive = item.get("exhaustive", list(class_names))
        if not isinstance(exhaustive, list) or not all(isinstance(c, str) for c in exhaustive):
            raise DatasetError(f"{where}: 'exhaustive' must be a list of class names")
        own = _aliases({} if item.get("aliases") is None else item["aliases"], class_names, where)
        aliases = _merged_aliases(shared, own)
        exhaustive = [_class_name(c, class_names) for c in exhaustive]  # "wbc", "platelet": as the XML reads
        bad = [c for c in exhaustive if c not in class_names]
        if bad:
            named = {name: cls for name, cls in aliases if cls}
            hint = "".join(f"; {c!r} is an alias: name its class, {named[c]!r}" for c in bad if c in named)
            raise DatasetError(f"{where}: exhaustive classes {bad} are not among {list(class_names)}{hint}")
        if not folder.is_dir():
            unset = [v for v in re.findall(r"\$\{?(\w+)", str(item["path"])) if v not in os.environ]
            hint = f" (environment variable {', '.join(unset)} is not set)" if unset else ""
            raise DatasetError(f"{where}: path {item['path']!r} ({folder}) is not a folder{hint}")
        try:  # a folder without Annotations/ (its JPEGImages/, an empty folder) would add no image, silently
            check_root(folder)
        except DatasetError as e:
            raise DatasetError(f"{where}: path {item['path']!r}: {e}") from None
        if any(os.path.samefile(folder, earlier.path) for earlier in sources):
            raise DatasetError(f"{where}: path {item['path']!r} ({folder}) is listed twice; list each folder once")
        sources.append(Source(folder, tuple(exhaustive), aliases))
    splits = doc.get("splits") or {}
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        raise DatasetError(f"{path}: 'splits' must map split names to ImageSets/Main file names")
    return DatasetSpec(path, tuple(sources), {str(k): v for k, v in splits.items()})


def load_dataset(
    data: str | os.PathLike | None,
    split: str | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    decode_images: bool = True,
) -> VOCDataset:
    """Records of ``split`` from a VOC folder or a dataset YAML (later sources override earlier ones).

    The split's images are those that any source's split file lists (sources without that file are
    skipped; a split that no source has is an error). Each image's labels come from the last source
    with an annotation for it, whether or not that source's own split files list the image (BCCD-dense
    has train and val files only: a trainval split must still take its dense labels). Each record
    carries which classes are exhaustively labelled in it.
    """
    from bloodcell.data.voc import (
        FELL_BACK,
        SKIPPED_IMAGE,
        SUPERSEDED,
        Finding,
        VOCDataset,
        load_voc,
        read_split_ids,
        unlabelled_images,
    )

    root = resolve_data_root(data)
    spec = read_spec(root, class_names)
    if split == ALL_SPLIT and not (available_splits(root) or _has_list(spec, split)):
        split = None  # "all", as exports name a folder without train/val/test lists: every annotation
    if spec.file is None:
        return load_voc(root, split, class_names=class_names, decode_images=decode_images)
    split_name = None if split is None else spec.split_file(split)
    members: dict[str, Path] = {}  # image id -> the first source whose split file (or Annotations) lists it
    has_split = False
    listed_twice = []  # (source, finding): a split file listing an image twice, as a plain folder reports it
    for source in spec.sources:
        if split_name is None:
            ids = sorted(p.stem for p in (source.path / "Annotations").glob("*.xml"))
        elif (source.path / "ImageSets" / "Main" / f"{split_name}.txt").is_file():
            ids = read_split_ids(source.path, split_name)  # unreadable: an error, not a missing split
        else:
            continue
        has_split = True
        for image_id, n in Counter(ids).items():
            members.setdefault(image_id, source.path)
            if n > 1:
                detail = f"listed {n} times in ImageSets/Main/{split_name}.txt; used once"
                finding = Finding(f"{image_id}.xml", None, "duplicate-id", detail, "used once")
                listed_twice.append((source.path, finding))
    if split_name is not None and not has_split:  # (a list that names no image is an empty split, not none)
        raise DatasetError(f"{root}: no source has split {split!r} (ImageSets/Main/{split_name}.txt)")
    annotated = {
        source.path: {i for i in members if (source.path / "Annotations" / f"{i}.xml").is_file()}
        for source in spec.sources
    }
    unannotated = {i for i in members if not any(i in ids for ids in annotated.values())}
    merged: dict[str, object] = {}
    labelled_by: dict[str, Path] = {}  # image id -> the source whose labels it keeps
    replaced: Counter[tuple[Path, Path]] = Counter()  # (earlier, later source) -> images whose labels it replaced
    parts = []  # (source, its findings)
    read: dict[Path, list] = {}  # source -> the records read from it (before a later source overrides them)
    names_read: dict[Path, set[str]] = {}  # source -> the class names its XML uses (canonical)
    for source in spec.sources:
        # the annotated images, and those annotated nowhere that this source lists (its reader reports them)
        ids = [i for i in members if i in annotated[source.path] or (i in unannotated and members[i] == source.path)]
        if not ids:
            continue
        part = load_voc(
            source.path,
            split_name,
            class_names=class_names,
            aliases=dict(source.aliases),
            decode_images=decode_images,
            image_ids=ids,
        )
        mask = np.array([name in source.exhaustive for name in class_names])
        for record in part.records:  # by image id: x.png in a later source replaces x.jpg in an earlier one
            # the source's completeness, less what the file itself leaves unknown (a box of an unknown class)
            exhaustive = tuple(bool(e) for e in mask & record.exhaustive_mask(len(class_names)))
            merged[record.image_id] = replace(record, exhaustive=exhaustive)
            if record.image_id in labelled_by:
                replaced[(labelled_by[record.image_id], source.path)] += 1
            labelled_by[record.image_id] = source.path
        parts.append((source.path, part.findings))
        read[source.path] = part.records
        names_read[source.path] = part.names_read
    if split_name is None:  # every source's whole folder: its images that nobody labels are forgotten files
        named = {record.image_path.name for record in merged.values()}  # type: ignore[attr-defined]
        for source in spec.sources:
            parts.append((source.path, unlabelled_images(source.path, read.get(source.path, []), named)))
    parts += [(path, [finding]) for path, finding in listed_twice]
    order = {source.path: i for i, source in enumerate(spec.sources)}
    findings = []
    for path, found in parts:
        for f in found:
            later = labelled_by.get(Path(f.file).stem)
            # a later source's labels replace this one's: its faults no longer matter
            if later is not None and order[later] > order[path]:
                f = replace(f, action=f"{SUPERSEDED}{later.name} labels this image")
            elif later is not None and order[later] < order[path] and f.action == SKIPPED_IMAGE:
                # an earlier source's labels stand in for this broken file: the image is kept, with their
                # (perhaps partial) completeness, and the finding must not say it was left out
                mask = merged[Path(f.file).stem].exhaustive_mask(len(class_names))  # type: ignore[attr-defined]
                kept = ", ".join(c for c, e in zip(class_names, mask, strict=True) if e) or "none"
                f = replace(f, action=f"{FELL_BACK}{later.name}'s labels (exhaustive there: {kept})")
            findings.append(replace(f, file=f"{path.name}/{f.file}"))
    if split_name is None:  # the whole folders: an alias none of them uses was meant for another spelling
        findings += _unused_aliases(spec, set().union(*names_read.values()))
    findings += _source_order_findings(
        spec, replaced, {p: len(r) for p, r in read.items()}, set(labelled_by.values()), whole=split_name is None
    )
    dataset = VOCDataset(root=root, class_names=tuple(class_names), split=split, findings=findings)
    dataset.records = sorted(merged.values(), key=lambda r: r.image_path.name)  # type: ignore[attr-defined]
    return dataset
