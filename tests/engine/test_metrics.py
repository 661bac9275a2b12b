import json

import numpy as np
import pytest

from bloodcell.engine.evaluate import choose_conf
from bloodcell.engine.metrics import DetectionEvaluator, voc_ap
from bloodcell.types import Detections

NAMES = ("RBC", "WBC", "Platelets")


def gt_image():
    return Detections([[10, 10, 50, 50], [60, 60, 100, 100], [5, 70, 25, 90]], [0, 0, 2])


def test_perfect_predictions_score_one():
    ev = DetectionEvaluator(NAMES, conf=0.5)
    gt = gt_image()
    ev.update(Detections(gt.boxes, gt.labels, [0.9, 0.8, 0.7]), gt, (128, 128))
    m = ev.compute()
    assert m.voc_ap50["RBC"] == pytest.approx(1.0)
    assert m.voc_ap50["Platelets"] == pytest.approx(1.0)
    assert np.isnan(m.voc_ap50["WBC"])  # no WBC in the ground truth: undefined, left out of the mean (TF OD API)
    assert m.voc_map50 == pytest.approx(1.0)
    assert m.coco_ap50 == pytest.approx(1.0)
    assert m.coco_ap50_95 == pytest.approx(1.0)
    assert m.count_mae == {"RBC": 0.0, "WBC": 0.0, "Platelets": 0.0}


def test_false_positive_ranked_first_halves_precision_at_first_hit():
    ev = DetectionEvaluator(("RBC",), conf=0.5)
    gt = Detections([[0, 0, 10, 10]], [0])
    ev.update(Detections([[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0], [0.9, 0.8]), gt, (64, 64))
    # precision/recall points: (p=0, r=0), (p=0.5, r=1) -> all-point AP = 0.5
    assert ev.compute().voc_ap50["RBC"] == pytest.approx(0.5)


def test_duplicate_detection_counts_as_false_positive():
    ev = DetectionEvaluator(("RBC",), conf=0.5)
    gt = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])
    ev.update(
        Detections([[0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7]), gt, (64, 64)
    )
    # ranks: TP (p1 r.5), FP (p.5 r.5), TP (p.67 r1) -> AP = .5*1 + .5*.667
    assert ev.compute().voc_ap50["RBC"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_voc_ap_uses_precision_envelope():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 0.667])) == pytest.approx(0.5 + 0.5 * 0.667)


def test_count_error_and_confusion_at_threshold():
    ev = DetectionEvaluator(NAMES, conf=0.5)
    gt = gt_image()
    pred = Detections([[10, 10, 50, 50], [60, 60, 100, 100], [5, 70, 25, 90]], [0, 1, 2], [0.9, 0.6, 0.3])
    ev.update(pred, gt, (128, 128))
    m = ev.compute()
    assert m.count_mae == {"RBC": 1.0, "WBC": 1.0, "Platelets": 1.0}
    assert m.confusion[0, 0] == 1 and m.confusion[0, 1] == 1  # one RBC called WBC
    assert m.confusion[2, 3] == 1  # platelet below threshold: missed


def test_unlabelled_cells_of_a_non_exhaustive_class_are_neither_true_nor_false():
    """LVIS's not-exhaustive rule: an unmatched RBC detection on an image whose RBCs are partly
    labelled is left out of AP, and the image is left out of the RBC count metrics."""
    gt = Detections([[10, 10, 50, 50]], [0])
    pred = Detections([[100, 100, 140, 140], [10, 10, 50, 50]], [0, 0], [0.9, 0.8])  # unlabelled cell first
    partial = DetectionEvaluator(("RBC",), conf=0.5)
    partial.update(pred, gt, (200, 200), exhaustive=np.array([False]))
    complete = DetectionEvaluator(("RBC",), conf=0.5)
    complete.update(pred, gt, (200, 200))
    assert partial.compute().voc_ap50["RBC"] == pytest.approx(1.0)
    assert partial.compute().coco_ap50 == pytest.approx(1.0)  # COCO AP follows the same rule
    m = complete.compute()
    assert m.voc_ap50["RBC"] == pytest.approx(0.5)
    assert m.coco_ap50 == pytest.approx(0.5, abs=0.01)
    assert m.count_mae["RBC"] == 1.0 and m.count_me["RBC"] == 1.0 and m.count_total_error["RBC"] == 1.0
    assert partial.compute().count_images["RBC"] == 0
    # a second box on a labelled cell is a false positive in both, unboxed cells or not
    dup = DetectionEvaluator(("RBC",), conf=0.5)
    dup.update(Detections([[10, 10, 50, 50], [11, 11, 50, 50]], [0, 0], [0.9, 0.8]), gt, (200, 200), np.array([False]))
    dup.update(Detections([[10, 10, 50, 50]], [0], [0.7]), gt, (200, 200), np.array([False]))
    duplicated = dup.compute()
    assert duplicated.voc_ap50["RBC"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert duplicated.coco_ap50 == pytest.approx(duplicated.voc_ap50["RBC"], abs=0.02)
    # Undefined count metrics are null in JSON (NaN is not JSON: model files and the web API carry these)
    saved = json.loads(json.dumps(partial.compute().to_dict(), allow_nan=False))
    assert saved["count_mae"] == {"RBC": None} and saved["count_total_error"] == {"RBC": None}


def test_difficult_boxes_are_neither_missed_nor_matched_in_voc_and_coco_alike():
    """A VOC difficult box (LabelImg's flag): a detection on it is no false positive, and leaving it
    undetected is no miss, in the VOC AP and the COCO AP of one `val` run."""
    gt = Detections([[10, 10, 50, 50], [100, 100, 140, 140]], [0, 0])
    hard = np.array([False, True])
    found = DetectionEvaluator(("RBC",), conf=0.5)  # the difficult cell detected, second in rank
    found.update(Detections(gt.boxes, gt.labels, [0.9, 0.8]), gt, (200, 200), difficult=hard)
    missed = DetectionEvaluator(("RBC",), conf=0.5)  # the difficult cell left out
    missed.update(Detections(gt.boxes[:1], gt.labels[:1], [0.9]), gt, (200, 200), difficult=hard)
    for m in (found.compute(), missed.compute()):
        assert m.voc_ap50["RBC"] == pytest.approx(1.0)
        assert m.coco_ap50 == pytest.approx(1.0) and m.coco_ap50_95 == pytest.approx(1.0)
    plain = DetectionEvaluator(("RBC",), conf=0.5)  # without the flag, the miss costs half the recall
    plain.update(Detections(gt.boxes[:1], gt.labels[:1], [0.9]), gt, (200, 200))
    assert plain.compute().coco_ap50 == pytest.approx(0.5, abs=0.01)


def test_per_class_operating_points_and_interval_coverage():
    from bloodcell.runtime.counting import Calibration

    gt = Detections([[10, 10, 50, 50], [60, 60, 100, 100]], [0, 1])
    pred = Detections([[10, 10, 50, 50], [60, 60, 100, 100]], [0, 1], [0.3, 0.7])
    certain = Calibration({"RBC": ((0.0, 1.0), (1.0, 1.0)), "WBC": ((0.0, 1.0), (1.0, 1.0))}, floor=0.05)
    ev = DetectionEvaluator(("RBC", "WBC"), conf=(0.2, 0.8), calibration=certain)
    ev.update(pred, gt, (128, 128))
    m = ev.compute()
    assert m.count_mae == {"RBC": 0.0, "WBC": 1.0}  # the WBC box is under its own threshold
    assert m.count_coverage == {"RBC": 1.0, "WBC": 1.0}  # both candidates certain: interval [1, 1]
    assert m.to_dict()["conf"] == [0.2, 0.8]


def test_choose_conf_is_per_class():
    gt = [Detections([[0, 0, 10, 10]] * 2 + [[20, 20, 30, 30]], [0, 0, 1]) for _ in range(3)]
    preds = [Detections(np.zeros((4, 4)), [0, 0, 0, 1], [0.9, 0.8, 0.3, 0.4]) for _ in range(3)]

    class Record:  # the parts of VOCRecord choose_conf reads
        def __init__(self, targets):
            self.labels = targets.labels

        def exhaustive_mask(self, k):
            return np.ones(k, bool)

    conf = choose_conf(preds, [Record(g) for g in gt], 2)
    assert 0.3 < conf[0] <= 0.8 and conf[1] <= 0.4
    assert conf == (0.55, 0.22)  # the middles of the equally good ranges (0.31-0.80 and 0.05-0.40)

    # A small val set (4 images, one sure white cell each): every threshold up to 0.90 counts exactly.
    # The lowest (0.05) would count every doubtful candidate on new images; the middle keeps a margin.
    one = [Detections([[20, 20, 30, 30]], [0]) for _ in range(4)]
    sure = [Detections([[20, 20, 30, 30]], [0], [0.9]) for _ in range(4)]
    assert choose_conf(sure, [Record(g) for g in one], 1) == (0.47,)
