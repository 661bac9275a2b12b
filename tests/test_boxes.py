"""Property tests for the numpy box maths, checked against torchvision.ops where it has a twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bloodcell import boxes as box_ops

# Per test rather than a global profile, so other test modules keep their own settings;
# no deadline because the first torchvision call imports torch.
fast = settings(max_examples=60, deadline=None)

coord = st.floats(-100, 1000, allow_nan=False, allow_infinity=False, width=32)
side = st.floats(0.5, 400, allow_nan=False, allow_infinity=False, width=32)
image_side = st.floats(1, 2000, allow_nan=False, allow_infinity=False)


@st.composite
def valid_boxes(draw: st.DrawFn, min_size: int = 0, max_size: int = 12) -> np.ndarray:
    """Non-degenerate xyxy boxes: x2 > x1 and y2 > y1."""
    n = draw(st.integers(min_size, max_size))
    xy = draw(arrays(np.float64, (n, 2), elements=coord))
    wh = draw(arrays(np.float64, (n, 2), elements=side))
    return np.concatenate([xy, xy + wh], axis=1)


# Any four numbers, so degenerate and inverted boxes are included.
any_boxes = arrays(np.float64, st.tuples(st.integers(0, 8), st.just(4)), elements=coord)


@fast
@given(any_boxes, any_boxes)
def test_iou_is_symmetric_and_in_unit_interval(a: np.ndarray, b: np.ndarray) -> None:
    ious = box_ops.iou_matrix(a, b)
    assert ious.shape == (len(a), len(b))
    np.testing.assert_array_equal(ious, box_ops.iou_matrix(b, a).T)
    assert ((ious >= 0) & (ious <= 1)).all()


@fast
@given(valid_boxes(min_size=1))
def test_iou_with_itself_is_one(a: np.ndarray) -> None:
    np.testing.assert_allclose(np.diag(box_ops.iou_matrix(a, a)), 1.0)


def test_iou_of_degenerate_box_is_zero() -> None:
    assert box_ops.iou_matrix([[5, 5, 5, 5]], [[5, 5, 5, 5]])[0, 0] == 0
    assert box_ops.iou_matrix([[9, 9, 1, 1]], [[0, 0, 10, 10]])[0, 0] == 0  # inverted


@fast
@given(valid_boxes(), valid_boxes())
def test_iou_matches_torchvision(a: np.ndarray, b: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_ops.iou_matrix(a, b), expected, rtol=1e-9, atol=1e-12)


@fast
@given(any_boxes, image_side, image_side)
def test_clip_is_inside_the_image_and_idempotent(boxes: np.ndarray, width: float, height: float) -> None:
    clipped = box_ops.clip(boxes, width, height)
    assert ((clipped[:, [0, 2]] >= 0) & (clipped[:, [0, 2]] <= width)).all()
    assert ((clipped[:, [1, 3]] >= 0) & (clipped[:, [1, 3]] <= height)).all()
    np.testing.assert_array_equal(box_ops.clip(clipped, width, height), clipped)
    inside = (boxes >= 0).all(axis=1) & (boxes[:, [0, 2]] <= width).all(axis=1)
    inside &= (boxes[:, [1, 3]] <= height).all(axis=1)
    np.testing.assert_array_equal(clipped[inside], boxes[inside])  # boxes already inside are untouched


@fast
@given(valid_boxes())
def test_format_round_trips(boxes: np.ndarray) -> None:
    xywh = box_ops.xyxy_to_xywh(boxes)
    np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2])
    np.testing.assert_allclose(box_ops.xywh_to_xyxy(xywh), boxes, atol=1e-9)
    cxcywh = box_ops.xyxy_to_cxcywh(boxes)
    np.testing.assert_allclose(cxcywh[:, 2:], xywh[:, 2:])
    np.testing.assert_allclose(box_ops.cxcywh_to_xyxy(cxcywh), boxes, atol=1e-9)
    through_all = box_ops.xywh_to_xyxy(box_ops.xyxy_to_xywh(box_ops.cxcywh_to_xyxy(cxcywh)))
    np.testing.assert_allclose(through_all, boxes, atol=1e-9)


@fast
@given(valid_boxes(), image_side, image_side)
def test_normalize_round_trip(boxes: np.ndarray, width: float, height: float) -> None:
    normalized = box_ops.normalize(boxes, width, height)
    np.testing.assert_allclose(box_ops.denormalize(normalized, width, height), boxes, rtol=1e-12, atol=1e-9)
    inside = box_ops.normalize(box_ops.clip(boxes, width, height), width, height)
    assert ((inside >= 0) & (inside <= 1)).all()


@st.composite
def scored_boxes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    boxes = draw(valid_boxes(min_size=1, max_size=20))
    # Clustered boxes overlap often; distinct scores give one right answer to compare with.
    boxes = boxes / 4
    scores = draw(arrays(np.float64, len(boxes), elements=st.floats(0, 1), unique=True))
    return boxes, scores


@fast
@given(scored_boxes(), st.floats(0.05, 0.95))
def test_nms_keeps_top_box_and_no_overlapping_pair(data: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    boxes, scores = data
    keep = box_ops.nms(boxes, scores, threshold)
    assert keep[0] == np.argmax(scores)
    assert (np.diff(scores[keep]) <= 0).all()  # by descending score
    ious = box_ops.iou_matrix(boxes[keep], boxes[keep])
    np.fill_diagonal(ious, 0)
    assert (ious <= threshold).all()
    # Every dropped box overlaps a kept box that scores higher.
    dropped = np.setdiff1d(np.arange(len(boxes)), keep)
    overlaps = box_ops.iou_matrix(boxes[dropped], boxes[keep]) > threshold
    higher = scores[keep][None, :] > scores[dropped][:, None]
    assert (overlaps & higher).any(axis=1).all()


@fast
@given(scored_boxes(), st.floats(0.05, 0.95))
def test_nms_matches_torchvision(data: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    boxes, scores = data
    expected = ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    np.testing.assert_array_equal(box_ops.nms(boxes, scores, threshold), expected)


@fast
@given(scored_boxes(), st.data(), st.sampled_from([0.0, -200.0, -1000.0]))
def test_batched_nms_is_nms_per_class(data: tuple[np.ndarray, np.ndarray], draw: st.DataObject, shift: float) -> None:
    boxes, scores = data
    boxes = boxes + shift  # raw predictions can lie left of or above the image
    labels = draw.draw(arrays(np.int64, len(boxes), elements=st.integers(0, 2)))
    keep = box_ops.batched_nms(boxes, scores, labels, 0.5)
    expected = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        expected += members[box_ops.nms(boxes[members], scores[members], 0.5)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)


@fast
@given(scored_boxes(), st.data())
def test_batched_nms_takes_one_threshold_per_class(data: tuple[np.ndarray, np.ndarray], draw: st.DataObject) -> None:
    boxes, scores = data
    labels = draw.draw(arrays(np.int64, len(boxes), elements=st.integers(0, 2)))
    limits = (0.5, 0.3, 0.7)
    keep = box_ops.batched_nms(boxes, scores, labels, limits)
    assert (np.diff(scores[keep]) <= 0).all()  # best first, as with one threshold
    expected = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        expected += members[box_ops.nms(boxes[members], scores[members], limits[c])].tolist()
    assert sorted(keep.tolist()) == sorted(expected)


def test_per_class_threshold_drops_a_second_white_cell_box_but_keeps_touching_red_cells() -> None:
    boxes = np.array([[0, 0, 100, 100], [40, 0, 140, 100]] * 2, dtype=np.float64)  # pairs at IoU 0.43
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 1])
    assert box_ops.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2, 3]
    assert box_ops.batched_nms(boxes, scores, labels, (0.5, 0.3, 0.5)).tolist() == [0, 1, 2]


def test_batched_nms_keeps_classes_apart_with_negative_coordinates() -> None:
    # With an offset of max + 1 = 101 the class-1 box lands exactly on the class-0 box.
    boxes = np.array([[0, 0, 100, 100], [-101, -101, -1, -1]], dtype=np.float64)
    keep = box_ops.batched_nms(boxes, np.array([0.9, 0.8]), np.array([0, 1]), 0.5)
    assert keep.tolist() == [0, 1]


def test_nms_of_nothing() -> None:
    assert box_ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert box_ops.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).shape == (0,)


def test_match_greedy_gives_a_taken_cell_to_the_higher_score_and_lets_the_next_box_take_its_neighbour() -> None:
    truth = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], float)
    pred = np.array([[0.5, 0, 10.5, 10], [0, 0, 10, 10], [100, 100, 110, 110]], float)
    # Box 1 (higher score) takes cell 0; box 0 overlaps cell 0 best (0.90) but falls to cell 1 (0.74).
    np.testing.assert_array_equal(box_ops.match_greedy(pred, np.array([0.6, 0.9, 0.8]), truth), [1, 0, -1])
    # At IoU 0.8 box 0 has no free cell left.
    np.testing.assert_array_equal(box_ops.match_greedy(pred, np.array([0.6, 0.9, 0.8]), truth, 0.8), [-1, 0, -1])
    assert box_ops.match_greedy(np.zeros((0, 4)), np.zeros(0), truth).shape == (0,)
    np.testing.assert_array_equal(box_ops.match_greedy(pred, np.ones(3), np.zeros((0, 4))), [-1, -1, -1])


@fast
@given(scored_boxes(), valid_boxes(max_size=10), st.floats(0.1, 0.9))
def test_match_greedy_is_one_to_one_above_the_threshold(
    data: tuple[np.ndarray, np.ndarray], truth: np.ndarray, threshold: float
) -> None:
    pred, scores = data
    truth = truth / 4  # near the predictions, so matches happen
    matched = box_ops.match_greedy(pred, scores, truth, threshold)
    hits = matched[matched >= 0]
    assert len(np.unique(hits)) == len(hits)
    ious = box_ops.iou_matrix(pred, truth)
    assert all(ious[i, j] >= threshold for i, j in enumerate(matched) if j >= 0)
    # Greedy: an unmatched prediction has no free cell at the threshold when its turn came.
    for i in np.nonzero(matched < 0)[0]:
        taken_before = {matched[k] for k in np.nonzero(scores > scores[i])[0] if matched[k] >= 0}
        assert all(j in taken_before for j in np.nonzero(ious[i] >= threshold)[0])


@fast
@given(scored_boxes(), st.data(), st.sampled_from([0.3, 0.45, 0.5, 0.6]))
def test_decoder_nms_in_opencv_matches_the_numpy_rule(
    data: tuple[np.ndarray, np.ndarray], draw: st.DataObject, rbc_limit: float
) -> None:
    """The decoder's case (float32 scores, boxes of positive area) runs in OpenCV: same boxes, same order."""
    boxes, scores = data
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    scores = np.unique(scores[: len(boxes)].astype(np.float32))  # distinct, as for one right answer
    scores = draw.draw(st.permutations(scores[scores > 0]))
    boxes = boxes[: len(scores)]
    labels = draw.draw(arrays(np.int64, len(boxes), elements=st.integers(0, 2)))
    limits = (rbc_limit, 0.3, 0.5)
    scores = np.asarray(scores, dtype=np.float32)
    assert box_ops._opencv_can_run(boxes, scores) or len(boxes) < 2
    keep = box_ops.batched_nms(boxes, scores, labels, limits)
    expected = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        expected += members[box_ops.nms(boxes[members], scores[members].astype(np.float64), limits[c])].tolist()
    assert keep.tolist() == sorted(expected, key=lambda i: (-scores[i], i))
