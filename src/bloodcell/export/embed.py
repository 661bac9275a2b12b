"""Export metadata inside the model files: a TFLite Model.metadata entry, ONNX metadata_props.

No torch (flatbuffers and ai_edge_litert's schema for TFLite, onnx for ONNX): `bloodcell calibrate`
writes an export's refit into it without loading PyTorch or the exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bloodcell.atomic import atomic_open
from bloodcell.runtime.metadata import EMBED_KEY

if TYPE_CHECKING:
    from onnx import ModelProto


def embed_tflite_metadata(path: Path, text: str) -> None:
    """Put ``text`` in ``path``'s Model.metadata under ``bloodcell`` (a buffer holding it), in place."""
    data = tflite_with_metadata(path.read_bytes(), text)
    with atomic_open(path, "wb") as f:
        f.write(data)


def tflite_with_metadata(data: bytes, text: str) -> bytes:
    """The .tflite file ``data`` with ``text`` as its Model.metadata ``bloodcell`` entry (replaced if there).

    Through the flatbuffer object API that ai_edge_litert ships (unpack, add, repack), as
    TensorFlow's flatbuffer_utils and the TFLite metadata populator do; tensors, ops and
    signatures are carried over unchanged."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    model.buffers = model.buffers or []
    for buffer in model.buffers:  # buffers stored past the flatbuffer (models over 2 GB) move inside it
        if buffer.offset > 1:
            buffer.data = np.frombuffer(data[buffer.offset : buffer.offset + buffer.size], np.uint8)
            buffer.offset = buffer.size = 0
    payload = schema.BufferT()
    payload.data = np.frombuffer(text.encode(), np.uint8)
    entry = next((m for m in model.metadata or [] if m.name in (EMBED_KEY, EMBED_KEY.encode())), None)
    if entry is None:
        entry = schema.MetadataT()
        entry.name, entry.buffer = EMBED_KEY, len(model.buffers)
        model.buffers.append(payload)
        model.metadata = [*(model.metadata or []), entry]
    else:  # embedding twice replaces the first copy
        model.buffers[entry.buffer] = payload
    builder = flatbuffers.Builder(len(data) + len(text) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def onnx_with_metadata(model: ModelProto, meta: dict) -> ModelProto:
    """The ONNX ``model`` (a ModelProto) with ``meta`` as its metadata_props, replacing any there."""
    del model.metadata_props[:]
    model.metadata_props.add(key=EMBED_KEY, value=json.dumps(meta))  # what the runtime reads
    for key in ("class_names", "input_size", "strides", "conf", "iou_threshold", "source_sha256"):
        model.metadata_props.add(key=key, value=json.dumps(meta[key]))  # one per key, for viewers like Netron
    return model


def with_metadata(path: Path, meta: dict) -> bytes:
    """The bytes of the export ``path`` with ``meta`` embedded in place of its own (``calibrate``: a model
    file copied without its sidecar still counts with the refitted operating points)."""
    if path.suffix.lower() == ".onnx":
        import onnx

        return onnx_with_metadata(onnx.load_from_string(path.read_bytes()), meta).SerializeToString()
    return tflite_with_metadata(path.read_bytes(), json.dumps(meta))
