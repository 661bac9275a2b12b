"""Read TFRecord files with TensorFlow's own parser and print what it sees, as JSON on stdout.

Run by test_export.py in a subprocess, so TensorFlow never shares a process with torch.
Usage: python tfrecord_readback.py FILE...
"""

from __future__ import annotations

import hashlib
import json
import sys

import tensorflow as tf

SCALARS = {
    "image/height": tf.int64,
    "image/width": tf.int64,
    "image/filename": tf.string,
    "image/source_id": tf.string,
    "image/format": tf.string,
    "image/encoded": tf.string,
}
LISTS = {
    "image/object/bbox/xmin": tf.float32,
    "image/object/bbox/xmax": tf.float32,
    "image/object/bbox/ymin": tf.float32,
    "image/object/bbox/ymax": tf.float32,
    "image/object/class/text": tf.string,
    "image/object/class/label": tf.int64,
    "image/object/difficult": tf.int64,
}
SPEC = {
    **{key: tf.io.FixedLenFeature([], dtype) for key, dtype in SCALARS.items()},
    **{key: tf.io.VarLenFeature(dtype) for key, dtype in LISTS.items()},
}


def plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "tolist"):
        return [plain(v) for v in value.tolist()] if value.ndim else plain(value.tolist())
    return value


def read(path: str) -> list[dict]:
    rows = []
    for serialized in tf.data.TFRecordDataset(path):  # checks both CRCs of every record
        example = tf.io.parse_single_example(serialized, SPEC)
        encoded = example.pop("image/encoded").numpy()
        row = {key: plain(value.numpy()) for key, value in example.items() if key in SCALARS}
        row |= {key: plain(tf.sparse.to_dense(example[key]).numpy()) for key in LISTS}
        row["encoded_sha256"] = hashlib.sha256(encoded).hexdigest()
        row["decoded_shape"] = tf.io.decode_image(encoded).shape.as_list()
        rows.append(row)
    return rows


if __name__ == "__main__":
    print(json.dumps({path: read(path) for path in sys.argv[1:]}))
