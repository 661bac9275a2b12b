"""The transform grid's ground truth (benchmarks/robustness.py): what counts as a true cell."""

import sys
from pathlib import Path

import numpy as np
import pytest

from bloodcell.types import Detections

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import robustness  # a benchmark script, not a package


def _sample(boxes: list[list[float]], width: int = 640, height: int = 480):
    image = np.zeros((height, width, 3), np.uint8)
    b = np.array(boxes, np.float32).reshape(-1, 4)
    return image, Detections(b, np.zeros(len(b), np.int64)), np.zeros((0, 4), np.float32)


def _rows(a: np.ndarray) -> list[list[float]]:
    return sorted(a.tolist())


def test_cells_cut_at_an_inner_seam_are_dont_care_and_outer_edges_stay_true():
    # 2x2 mosaic: tile k at (col, row) = (k % 2, k // 2); each tile has one cell on every edge and one inside
    edges = [[0, 200, 50, 260], [300, 0, 360, 40], [600, 200, 640, 260], [300, 430, 360, 480], [300, 200, 360, 260]]
    tiles = [_sample(edges) for _ in range(4)]
    _, truth, ignore = robustness.mosaic(tiles, 2, 2)
    outer_and_inside = [
        [0, 200, 50, 260], [300, 0, 360, 40], [300, 200, 360, 260],  # top-left: left and top edges are outside
        [940, 0, 1000, 40], [1240, 200, 1280, 260], [940, 200, 1000, 260],  # top-right: top, right
        [0, 680, 50, 740], [300, 910, 360, 960], [300, 680, 360, 740],  # bottom-left: left, bottom
        [1240, 680, 1280, 740], [940, 910, 1000, 960], [940, 680, 1000, 740],  # bottom-right: right, bottom
    ]  # fmt: skip
    assert _rows(truth.boxes) == sorted(outer_and_inside)
    on_seams = [
        [600, 200, 640, 260], [300, 430, 360, 480],  # top-left: right and bottom edges are seams
        [640, 200, 690, 260], [940, 430, 1000, 480],  # top-right: left, bottom
        [600, 680, 640, 740], [300, 480, 360, 520],  # bottom-left: right, top
        [640, 680, 690, 740], [940, 480, 1000, 520],  # bottom-right: left, top
    ]  # fmt: skip
    assert _rows(ignore) == sorted(on_seams)
    _, counted, ignore = robustness.mosaic(tiles, 2, 2, seam_cells="count")
    assert len(counted) == 20 and len(ignore) == 0
    with pytest.raises(ValueError, match="seam_cells"):
        robustness.mosaic(tiles, 2, 2, seam_cells="drop")


def test_magnified_fields_are_the_four_corners_and_keep_cells_at_least_half_visible():
    big = _sample([[600, 440, 700, 540], [0, 0, 100, 100], [1200, 900, 1280, 960]], 1280, 960)
    assert robustness.corners(big) == [(0, 0), (640, 0), (0, 480), (640, 480)]
    fields = [robustness.crop(big, 640, 480, at=a) for a in robustness.corners(big)]
    assert [f[0].shape[:2] for f in fields] == [(480, 640)] * 4
    assert _rows(fields[0][1].boxes) == [[0, 0, 100, 100]] and _rows(fields[3][1].boxes) == [[560, 420, 640, 480]]
    assert len(fields[1][1]) == len(fields[2][1]) == 0
    # the box across the centre is cut in four: under half of it in any field, so "don't care" in each
    assert [_rows(f[2]) for f in fields] == [
        [[600, 440, 640, 480]],
        [[0, 440, 60, 480]],
        [[600, 0, 640, 60]],
        [[0, 0, 60, 60]],
    ]


def test_corner_fields_of_a_field_sized_image_are_one_and_smaller_ones_are_refused():
    assert robustness.corners(_sample([])) == [(0, 0)]
    with pytest.raises(ValueError, match="600x450"):
        robustness.corners(_sample([], 600, 450))
