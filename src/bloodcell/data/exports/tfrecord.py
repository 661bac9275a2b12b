"""TFRecord in the TF Object Detection API layout (``<out>/<split>.tfrecord``) plus ``label_map.pbtxt``.

Hand-written (TFRecord framing + the Example protobuf) so exporting needs no TensorFlow for a 10-line format.
Framing per record: uint64 length, masked crc32c(length), data, masked crc32c(data), all little-endian.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageOps

from bloodcell import boxes as box_ops
from bloodcell.atomic import atomic_open, write_text
from bloodcell.data.voc import VOCDataset, VOCRecord
from bloodcell.runtime.images import decoding_file

_CRC32C_POLY = 0x82F63B78  # Castagnoli, bit-reversed
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c_python(data: bytes) -> int:
    """CRC-32C in plain Python (~10 MB/s): the fallback without google-crc32c (same values, far slower)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _native_crc32c():
    """google-crc32c's C (hardware-accelerated) CRC-32C when installed (``pip install 'bloodcell[tfrecord]'``)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


_native = _native_crc32c()


def crc32c(data: bytes) -> int:
    return _native(data) if _native is not None else crc32c_python(data)


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord: the serialized message with its length and checksums."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# Protobuf wire format, just what tf.train.Example needs (field numbers from tensorflow/core/example/*.proto).


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values are sent as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _packed(payload: bytes) -> bytes:
    return _field(1, payload) if payload else b""  # an empty repeated field is simply absent


def bytes_feature(values: Iterable[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))  # Feature.bytes_list{value}


def float_feature(values: Iterable[float]) -> bytes:
    values = list(values)
    return _field(2, _packed(struct.pack(f"<{len(values)}f", *values)))  # Feature.float_list{packed value}


def int64_feature(values: Iterable[int]) -> bytes:
    return _field(3, _packed(b"".join(_varint(int(v)) for v in values)))  # Feature.int64_list{packed value}


def encode_example(features: dict[str, bytes]) -> bytes:
    """Serialize tf.train.Example{features: Features{map<string, Feature> feature}} from encoded Features."""
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, value)) for key, value in features.items())
    return _field(1, entries)


def encoded_image(path: Path) -> tuple[bytes, bytes]:
    """The file's own bytes and format where TensorFlow decodes them as bloodcell reads them: a JPEG or PNG
    without an EXIF turn or flip. The OD API decodes only JPEG and PNG, and ignores EXIF while the boxes are in
    the turned frame (as the image is shown), so others become a PNG (lossless) of the pixels as shown."""
    data = path.read_bytes()
    with decoding_file(path), Image.open(io.BytesIO(data)) as im:
        if im.getexif().get(0x0112, 1) == 1:
            if data.startswith(b"\xff\xd8\xff"):
                return data, b"jpeg"
            if data.startswith(_PNG_MAGIC):
                return data, b"png"
        buffer = io.BytesIO()
        ImageOps.exif_transpose(im).save(buffer, format="PNG")
    return buffer.getvalue(), b"png"


def example(record: VOCRecord, class_names: tuple[str, ...]) -> bytes:
    data, fmt = encoded_image(record.image_path)
    xmin, ymin, xmax, ymax = box_ops.normalize(record.boxes, record.width, record.height).T
    name = record.image_path.name.encode()
    return encode_example(
        {
            "image/height": int64_feature([record.height]),
            "image/width": int64_feature([record.width]),
            "image/filename": bytes_feature([name]),
            "image/source_id": bytes_feature([name]),
            "image/encoded": bytes_feature([data]),
            "image/format": bytes_feature([fmt]),
            "image/object/bbox/xmin": float_feature(xmin),
            "image/object/bbox/xmax": float_feature(xmax),
            "image/object/bbox/ymin": float_feature(ymin),
            "image/object/bbox/ymax": float_feature(ymax),
            "image/object/class/text": bytes_feature(class_names[i].encode() for i in record.labels),
            "image/object/class/label": int64_feature(record.labels + 1),  # the OD API keeps 0 for background
            "image/object/difficult": int64_feature(record.difficult.astype(int)),
        }
    )


def label_map(class_names: tuple[str, ...]) -> str:
    def quoted(name: str) -> str:
        return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return "".join(f"item {{\n  id: {i}\n  name: {quoted(n)}\n}}\n" for i, n in enumerate(class_names, start=1))


def write(datasets: dict[str, VOCDataset], out: Path) -> list[Path]:
    paths = []
    for split, dataset in datasets.items():
        path = out / f"{split}.tfrecord"
        with atomic_open(path, "wb") as f:
            for record in dataset.records:
                f.write(frame(example(record, dataset.class_names)))
        paths.append(path)
    path = out / "label_map.pbtxt"
    write_text(path, label_map(next(iter(datasets.values())).class_names))
    return [*paths, path]
