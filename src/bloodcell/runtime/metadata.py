"""The metadata of an exported model: its schema, its validation, and where it is read from.

``bloodcell export`` writes the same JSON twice: as the sidecar ``<model>.json`` (easy to read and to
edit) and inside the model file (ONNX ``metadata_props`` and TFLite ``Model.metadata``, both named
``bloodcell``), so that a model file copied on its own still runs. Every field is checked on load:
a partial or hand-broken file is one error naming the file and the field, never a KeyError mid-run.

Unknown keys are tolerated (kept in ``raw``, otherwise ignored): newer exports may add informational
fields and an older runtime on a Raspberry Pi must still read them. A change that old runtimes would
misread bumps ``format_version``, and a version newer than ``FORMAT_VERSION`` is refused.

Torch-free: the standard library, numpy, and the model runtimes (onnxruntime, ai_edge_litert).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, NoReturn

from bloodcell.config import SCALE_LIMITS
from bloodcell.digest import sha256_of
from bloodcell.errors import MetadataError
from bloodcell.runtime.counting import Calibration

FORMAT = "bloodcell-export"
NORMALIZED_INPUT_VERSION = 2  # int8 files may take normalized input ("input_normalization")
PER_CLASS_NMS_VERSION = 3  # "iou_threshold" may be one per class
ONNX_INT8_VERSION = 4  # int8 ONNX files take uint8 levels ("onnx_input")
FORMAT_VERSION = ONNX_INT8_VERSION
EMBED_KEY = "bloodcell"  # ONNX metadata_props key and TFLite Model.metadata name
MODEL_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}
# What ties metadata to one graph and its weights; the other fields (conf, iou_threshold, calibration, cell_size) are
# operating points that a user may retune in the sidecar without exporting again.
GRAPH_FIELDS = (
    "model_format",
    "int8",
    "class_names",
    "input_size",
    "strides",
    "input_normalization",
    "input_scale",
    "onnx_input",
    "graph_sha256",
)
_TEXT_FIELDS = ("version", "date", "architecture", "input_layout", "source", "source_sha256", "graph_sha256")
_DICT_FIELDS = ("outputs", "source_metrics", "tflite_input", "tflite_outputs", "qat", "fitted", "counting_fit")


@dataclass(frozen=True)
class ExportMetadata:
    """Validated export metadata; ``source`` names where it came from (for later error messages)."""

    model_format: str  # "onnx" or "tflite"
    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (width, height)
    strides: tuple[int, ...]
    conf: float | tuple[float, ...]  # one operating point, or one per class
    iou_threshold: float | tuple[float, ...]  # NMS IoU, one or one per class
    int8: bool = False
    calibration: Calibration | None = None
    cell_size: float | None = None
    # Images from the training microscope are resized by this before the network (TrainConfig.scale).
    input_scale: float = 1.0
    architecture: str | None = None
    # sha256 of the converted graph before its metadata went in: two int8 exports of one checkpoint (other
    # calibration images) differ here, so a sidecar refitted on one is refused beside the other
    graph_sha256: str | None = None
    source_metrics: dict[str, Any] | None = None
    # The graph takes pixels * scale + shift (per channel) instead of pixels; None: plain pixels.
    input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # int8 ONNX: the graph takes uint8 levels of its (normalized) input, value = (level - zero) * scale.
    onnx_input: tuple[float, int] | None = None
    format_version: int = FORMAT_VERSION
    source: str = field(default="", compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def check_graph(self, model: Path, input_shape: Any, output_shapes: list[Any]) -> None:
        """Refuse metadata that does not describe ``model``'s graph (NHWC input, (1, A, K) and
        (1, A, 4) outputs): decoding with the wrong class count or anchors fails mid-run or mislabels."""
        width, height = self.input_size
        shape = _dims(input_shape)
        if shape is not None and len(shape) == 4 and shape[3] != 3 and shape[1] == 3:
            raise MetadataError(
                f"{model}: takes channels-first images ({'x'.join(map(str, shape))}, NCHW); bloodcell's exports "
                "take channels-last (1xHxWx3, NHWC): this file is not one of them"
            )
        if shape is not None and len(shape) == 4 and shape[1:3] != (height, width):
            self._fail("input_size", f"is {width}x{height} but {model.name} takes {shape[2]}x{shape[1]} images")
        outs = [_dims(s) for s in output_shapes]
        if any(s is None or len(s) != 3 for s in outs):
            return  # symbolic dimensions: nothing to compare
        k = len(self.class_names)
        last = sorted(s[-1] for s in outs)
        if last != sorted([k, 4]):
            other = [d for d in last if d != 4] or [4]
            self._fail("class_names", f"has {k} names but {model.name} outputs scores for {other[0]} classes")
        anchors = sum((width // s) * (height // s) for s in self.strides)
        if any(s[1] != anchors for s in outs):
            self._fail(
                "strides",
                f"{list(self.strides)} give {anchors} anchors at {width}x{height} but {model.name} has {outs[0][1]}",
            )

    def _fail(self, key: str, problem: str) -> NoReturn:
        raise MetadataError(f"{self.source}: field {key!r} {problem}")


def parse_metadata(raw: object, source: str) -> ExportMetadata:
    """Validate a metadata dict (a parsed sidecar or embedded copy); ``source`` names it in errors."""
    return _Checker(raw, source).metadata()


def parse_json(text: str | bytes, source: str, hint: str = "") -> ExportMetadata:
    """``hint``: what to do about JSON that does not parse (said after the parser's words)."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"{source}: not valid JSON ({e}){hint}") from None
    return parse_metadata(raw, source)


def sidecar_path(model: Path) -> Path:
    """<file>.json; for edgetpu_compiler's X_edgetpu.tflite, the sidecar of the X.tflite it came from."""
    own = model.with_name(model.name + ".json")
    if not own.exists() and model.stem.endswith("_edgetpu"):
        return model.with_name(model.stem.removesuffix("_edgetpu") + model.suffix + ".json")
    return own


def model_digest(model: Path) -> str:
    """sha256 of the model file and its sidecar, if any (an export's operating points may live there):
    what changes when either changes the counts."""
    sidecar = sidecar_path(model)
    return sha256_of(model, *([sidecar] if sidecar.is_file() else []))


def model_ref(model: Path) -> str:
    """How results name the model that counted them: ``cellnet_bccd.pt@3f2a9c01b7e4`` (file name and
    the start of ``model_digest``), so a slide's fields counted by two models or refits can be told apart."""
    return f"{model.name}@{model_digest(model)[:12]}"


def counted_by(name: str, digest: str, thresholds: tuple[float, ...] | None, cell_size: float | str | None) -> str:
    """What counted a batch's rows or a watched folder: name@sha256 prefix, plus the --conf and --cell-size it
    counted with when not the model's own, so a rerun with other settings is refused instead of mixing two
    kinds of counts in one output."""
    parts = [f"{name}@{digest[:12]}"]
    if thresholds is not None:
        parts.append("conf=" + ",".join(f"{t:g}" for t in thresholds))
    if cell_size != "auto":
        parts.append(f"cell_size={'none' if cell_size is None else f'{float(cell_size):g}'}")
    return " ".join(parts)


def read_sidecar(model: Path) -> ExportMetadata | None:
    """The validated sidecar of ``model``; None when there is none."""
    path = sidecar_path(model)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MetadataError(f"{path}: unreadable metadata ({e.strerror or e})") from None
    # the model file carries its own copy: without the sidecar it counts as exported (or last refitted)
    hint = f"; fix it, or delete it to use the metadata inside {model.name}"
    return parse_json(text, str(path), hint)


def onnx_embedded(session: Any) -> str | None:
    """The JSON that ``bloodcell export`` put in an ONNX file's metadata_props (onnxruntime reads it)."""
    return session.get_modelmeta().custom_metadata_map.get(EMBED_KEY)


def tflite_embedded(model: Path) -> bytes | None:
    """The ``bloodcell`` entry of a .tflite file's Model.metadata (a buffer holding the JSON), read
    with the flatbuffer schema module that ai_edge_litert ships; None when absent or unreadable."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # tflite_runtime installs have no schema module: sidecar only
        return None
    data = model.read_bytes()
    try:
        if not schema.Model.ModelBufferHasIdentifier(data, 0):
            return None
        root = schema.Model.GetRootAs(data, 0)
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if entry.Name() != EMBED_KEY.encode():
                continue
            buffer = root.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # models over 2 GB keep buffers after the flatbuffer
                return data[buffer.Offset() : buffer.Offset() + buffer.Size()]
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    except Exception:  # a corrupt flatbuffer raises struct/index errors; the interpreter reports it
        return None
    return None


def resolve_metadata(model: Path, sidecar: ExportMetadata | None, embedded: str | bytes | None) -> ExportMetadata:
    """The sidecar if there is one, else the embedded copy (each validated), else a clear error.

    When both exist, the sidecar wins on operating points (conf, iou_threshold, calibration,
    cell_size: retuning them in the sidecar is legitimate) unless the file holds a later refit
    (``refit_inside_is_newer``: a sidecar left from before `bloodcell calibrate`); disagreeing on
    GRAPH_FIELDS is refused: that sidecar belongs to another export and would mislabel or break decoding."""
    inside = None if embedded is None else parse_json(embedded, f"{model} (embedded metadata)")
    meta = sidecar or inside
    if meta is None:
        raise MetadataError(
            f"{sidecar_path(model)}: metadata missing, and {model.name} has none embedded; "
            "export the model again with `bloodcell export`"
        )
    if sidecar is not None and inside is None and model.suffix.lower() == ".onnx":
        _check_unmarked_graph(model, sidecar)
    if sidecar is not None and inside is not None:
        ours, theirs = sidecar.raw.get("source_sha256"), inside.raw.get("source_sha256")
        if ours and theirs and ours != theirs:  # same graph shape, other weights: its points fit those
            raise MetadataError(
                f"{sidecar.source}: made for an export of another model (source sha256 {str(ours)[:12]}…, the "
                f"file's {str(theirs)[:12]}…); delete it, or refit it with bloodcell calibrate"
            )
        for key in GRAPH_FIELDS:
            if getattr(sidecar, key) != getattr(inside, key):
                raise MetadataError(
                    f"{sidecar.source}: field {key!r} is {_show(sidecar.raw.get(key))} but the metadata embedded "
                    f"in {model.name} says {_show(inside.raw.get(key))}; the sidecar is from another export "
                    "(delete it or export again)"
                )
        if refit_inside_is_newer(sidecar.raw, inside.raw):
            meta = inside
    expected = MODEL_FORMATS.get(model.suffix.lower())
    if expected is not None and meta.model_format != expected:
        meta._fail("model_format", f"is {meta.model_format!r} but {model.name} is a {model.suffix} file")
    return meta


def _check_unmarked_graph(model: Path, sidecar: ExportMetadata) -> None:
    """An ONNX file without bloodcell's metadata inside is the graph ``graph_sha256`` names byte for byte
    (the export hashes it before the metadata goes in), or another network beside a copied sidecar."""
    if not sidecar.graph_sha256 or sidecar_path(model).name != f"{model.name}.json":
        return
    actual = sha256_of(model)
    if actual != sidecar.graph_sha256:
        raise MetadataError(
            f"{sidecar.source}: made for another network (graph sha256 {sidecar.graph_sha256[:12]}…; {model.name} "
            f"is {actual[:12]}… and carries no bloodcell metadata of its own); export the model with `bloodcell "
            "export`"
        )


def refit_inside_is_newer(sidecar: dict, inside: dict) -> bool:
    """Whether the file's own metadata holds a refit (`bloodcell calibrate`) made after the sidecar's
    operating points: the sidecar has no refit at all, or an earlier one. Each refit counts on from the
    one it started from (``generation``), which no wrong clock can reorder; refits from before that was
    recorded compare their dates; anything else leaves the sidecar first."""
    mine, theirs = inside.get("fitted"), sidecar.get("fitted")
    if not isinstance(mine, dict):
        return False
    if not isinstance(theirs, dict):
        return True
    if _int(mine.get("generation")) is not None or _int(theirs.get("generation")) is not None:
        return refit_generation(inside) > refit_generation(sidecar)  # an undated-generation refit is the first
    a, b = _aware_time(mine.get("at")), _aware_time(theirs.get("at"))
    return a is not None and b is not None and a > b


def refit_generation(raw: dict) -> int:
    """How many refits the metadata ``raw`` has had (0: none; 1: one before generations were counted)."""
    fitted = raw.get("fitted")
    if not isinstance(fitted, dict):
        return 0
    return _int(fitted.get("generation")) or 1


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _aware_time(value: object) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


#: What a sidecar may retune without another export (see GRAPH_FIELDS).
OPERATING_FIELDS = ("conf", "iou_threshold", "calibration", "cell_size")


def sidecar_note(model: Path, sidecar: ExportMetadata | None, embedded: str | bytes | None) -> str | None:
    """What to tell a user whose sidecar overrides a refit inside the file: `bloodcell calibrate` writes
    both, so a sidecar that disagrees with the file's refit is most likely left from before it. (A sidecar
    retuned by hand over an unrefit file, or a refit only in the sidecar, is how it should be: no note.)"""
    if sidecar is None or embedded is None:
        return None
    try:
        inside = json.loads(embedded)
    except ValueError:
        return None
    if not isinstance(inside, dict) or not inside.get("fitted") or inside["fitted"] == sidecar.raw.get("fitted"):
        return None
    if all(sidecar.raw.get(k) == inside.get(k) for k in OPERATING_FIELDS):
        return None
    if refit_inside_is_newer(sidecar.raw, inside):
        return (
            f"{sidecar_path(model).name} is older than the refit inside {model.name} (`bloodcell calibrate`): "
            "the file's operating points are used; delete the sidecar or refit it"
        )
    return (
        f"{sidecar_path(model).name} sets operating points other than the refit inside {model.name} "
        "(`bloodcell calibrate`), and is read first: if it is older than that refit, delete it"
    )


def _dims(shape: Any) -> tuple[int, ...] | None:
    """A shape as ints; None when some dimension is symbolic (ONNX names dynamic axes)."""
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def _show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_MISSING = object()


class _Checker:
    """Checks one field at a time; each failure names the source, the field, and what is wrong."""

    def __init__(self, raw: object, source: str) -> None:
        self.source = source
        if not isinstance(raw, dict):
            self.fail(None, f"must be a JSON object, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw

    def fail(self, key: str | None, problem: str) -> NoReturn:
        where = f"field {key!r} " if key else ""
        raise MetadataError(f"{self.source}: {where}{problem}")

    def get(self, key: str, required: bool = True) -> Any:
        value = self.raw.get(key, _MISSING)
        if value is _MISSING and required:
            self.fail(key, "is missing")
        return None if value is _MISSING else value

    def number(self, key: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
        ok = _is_number(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            self.fail(key, f"must be a number in {bound}, got {_show(value)}")
        return float(value)

    def metadata(self) -> ExportMetadata:
        fmt = self.get("format")
        if fmt != FORMAT:
            self.fail("format", f"must be {FORMAT!r} (a bloodcell export's metadata), got {_show(fmt)}")
        version = self.get("format_version", required=False)
        version = 1 if version is None else version  # exports from before the field existed
        if not _is_int(version) or version < 1:
            self.fail("format_version", f"must be a positive integer, got {_show(version)}")
        if version > FORMAT_VERSION:
            self.fail(
                "format_version",
                f"is {version}: from a newer bloodcell (this one reads up to {FORMAT_VERSION}); upgrade bloodcell",
            )
        model_format = self.get("model_format")
        if model_format not in MODEL_FORMATS.values():
            self.fail("model_format", f"must be one of {sorted(MODEL_FORMATS.values())}, got {_show(model_format)}")
        int8 = self.get("int8", required=False)
        int8 = False if int8 is None else int8
        if not isinstance(int8, bool):
            self.fail("int8", f"must be true or false, got {_show(int8)}")
        class_names = self.class_names()
        input_size = self.int_list("input_size", length=2, what="(width, height)")
        strides = self.int_list("strides")
        for s in strides:
            if input_size[0] % s or input_size[1] % s:
                self.fail("strides", f"{list(strides)} must divide 'input_size' {list(input_size)}")
        for key in _TEXT_FIELDS:
            value = self.get(key, required=False)
            if value is not None and not isinstance(value, str):
                self.fail(key, f"must be a string, got {_show(value)}")
        for key in _DICT_FIELDS:
            value = self.get(key, required=False)
            if value is not None and not isinstance(value, dict):
                self.fail(key, f"must be an object, got {_show(value)}")
        ops = self.get("ops", required=False)
        if ops is not None and not (isinstance(ops, list) and all(isinstance(o, str) for o in ops)):
            self.fail("ops", f"must be a list of operator names, got {_show(ops)}")
        images = self.get("calibration_images", required=False)
        if images is not None and not (_is_int(images) and images >= 0):
            self.fail("calibration_images", f"must be a non-negative integer, got {_show(images)}")
        normalization = self.input_normalization()
        onnx_input = self.onnx_input()
        # the uint8 levels of a normalized input: in int8 ONNX files only
        int8_onnx = model_format == "onnx" and int8 and normalization is not None and version >= ONNX_INT8_VERSION
        if onnx_input is not None and not int8_onnx:
            self.fail(
                "onnx_input",
                "belongs to int8 ONNX files (model_format 'onnx', int8 true, input_normalization set, "
                f"format_version {ONNX_INT8_VERSION} or more); this metadata is not one",
            )
        cell_size = self.get("cell_size", required=False)
        if cell_size is not None and not (_is_number(cell_size) and cell_size > 0):
            self.fail("cell_size", f"must be a positive number of pixels or null, got {_show(cell_size)}")
        input_scale = self.get("input_scale", required=False)
        low, high = SCALE_LIMITS
        if input_scale is not None and not (_is_number(input_scale) and low <= input_scale <= high):
            self.fail("input_scale", f"must be a number in [{low}, {high}] or null, got {_show(input_scale)}")
        return ExportMetadata(
            model_format=model_format,
            class_names=class_names,
            input_size=(input_size[0], input_size[1]),
            strides=strides,
            conf=self.per_class("conf", len(class_names), lo_open=True),  # 0 would count every detection
            iou_threshold=self.per_class("iou_threshold", len(class_names), lo_open=True),
            int8=int8,
            calibration=self.calibration(class_names),
            cell_size=None if cell_size is None else float(cell_size),
            input_scale=1.0 if input_scale is None else float(input_scale),
            architecture=self.raw.get("architecture"),
            graph_sha256=self.raw.get("graph_sha256"),
            source_metrics=self.raw.get("source_metrics"),
            input_normalization=normalization,
            onnx_input=onnx_input,
            format_version=version,
            source=self.source,
            raw=dict(self.raw),
        )

    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        value = self.get("input_normalization", required=False)
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"scale", "shift"}:
            shape = "{'scale': [3 numbers], 'shift': [3 numbers]}"
            self.fail("input_normalization", f"must be {shape}, got {_show(value)}")
        for key in ("scale", "shift"):
            v = value[key]
            if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) and math.isfinite(x) for x in v)):
                self.fail(f"input_normalization.{key}", f"must be 3 finite numbers (R, G, B), got {_show(v)}")
        if any(x <= 0 for x in value["scale"]):
            self.fail("input_normalization.scale", f"must be positive, got {_show(value['scale'])}")
        return tuple(map(float, value["scale"])), tuple(map(float, value["shift"]))

    def onnx_input(self) -> tuple[float, int] | None:
        value = self.get("onnx_input", required=False)
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("dtype") != "uint8" or "quantization" not in value:
            self.fail(
                "onnx_input", f"must be {{'dtype': 'uint8', 'quantization': [scale, zero point]}}, got {_show(value)}"
            )
        quant = value["quantization"]
        ok = isinstance(quant, list) and len(quant) == 2 and _is_number(quant[0]) and math.isfinite(quant[0])
        if not (ok and quant[0] > 0 and _is_int(quant[1]) and 0 <= quant[1] <= 255):
            self.fail("onnx_input.quantization", f"must be [positive scale, zero point 0..255], got {_show(quant)}")
        return float(quant[0]), int(quant[1])

    def class_names(self) -> tuple[str, ...]:
        names = self.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            self.fail("class_names", f"must be a non-empty list of non-empty strings, got {_show(names)}")
        if len(set(names)) != len(names):
            self.fail("class_names", f"has duplicates: {_show(names)}")
        return tuple(names)

    def int_list(self, key: str, length: int | None = None, what: str = "") -> tuple[int, ...]:
        value = self.get(key)
        ok = isinstance(value, list) and value and all(_is_int(v) and v > 0 for v in value)
        if not ok or (length is not None and len(value) != length):
            count = f"{length} " if length else "a non-empty list of "
            self.fail(key, f"must be {count}positive integers{' ' + what if what else ''}, got {_show(value)}")
        return tuple(value)

    def per_class(self, key: str, k: int, lo_open: bool = False) -> float | tuple[float, ...]:
        """A number in [0, 1] ((0, 1] with ``lo_open``) or a list of ``k``, one per class."""
        value = self.get(key)
        if isinstance(value, list):
            if len(value) != k:
                self.fail(key, f"has {len(value)} values but 'class_names' has {k} classes (one per class)")
            return tuple(self.number(key, v, 0.0, 1.0, lo_open) for v in value)
        if not _is_number(value):
            bound = "(0, 1]" if lo_open else "[0, 1]"
            self.fail(key, f"must be a number in {bound} or a list of {k} (one per class), got {_show(value)}")
        return self.number(key, value, 0.0, 1.0, lo_open)

    def calibration(self, class_names: tuple[str, ...]) -> Calibration | None:
        cal = self.get("calibration", required=False)
        if cal is None:
            return None
        if not isinstance(cal, dict):
            self.fail("calibration", f"must be an object or null, got {_show(cal)}")
        knots = cal.get("knots")
        if not isinstance(knots, dict):
            self.fail("calibration.knots", f"must be an object of per-class knots, got {_show(knots)}")
        for name, curve in knots.items():
            key = f"calibration.knots.{name}"
            if name not in class_names:
                self.fail(key, f"is not one of 'class_names' {list(class_names)}")
            if not isinstance(curve, dict):
                self.fail(key, f"must be an object with 'score' and 'prob' lists, got {_show(curve)}")
            xs, ys = curve.get("score"), curve.get("prob")
            for part, values in (("score", xs), ("prob", ys)):
                if not (isinstance(values, list) and values and all(_is_number(v) for v in values)):
                    self.fail(f"{key}.{part}", f"must be a non-empty list of numbers, got {_show(values)}")
            if len(xs) != len(ys):
                self.fail(key, f"has {len(xs)} scores but {len(ys)} probabilities")
            if any(b < a for a, b in pairwise(xs)):
                self.fail(f"{key}.score", "must be in increasing order")
            if any(not 0 <= p <= 1 for p in ys):
                self.fail(f"{key}.prob", f"must be probabilities in [0, 1], got {_show(ys)}")
        if "floor" in cal:
            self.number("calibration.floor", cal["floor"], 0.0, 1.0)
        if "level" in cal:
            self.number("calibration.level", cal["level"], 0.0, 1.0, lo_open=True)
        width = cal.get("width", {})
        if not isinstance(width, dict):
            self.fail("calibration.width", f"must be an object of per-class factors, got {_show(width)}")
        for name, factor in width.items():
            if name not in class_names:
                self.fail(f"calibration.width.{name}", f"is not one of 'class_names' {list(class_names)}")
            if not (_is_number(factor) and factor >= 0):
                self.fail(f"calibration.width.{name}", f"must be a non-negative number, got {_show(factor)}")
        return Calibration.from_dict(cal)
