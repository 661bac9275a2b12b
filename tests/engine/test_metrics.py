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


def test_choose_conf_minimizes_count_error():
    class R:
        def __init__(self, labels):
            self.labels = np.array(labels)

    records = [R([0, 0, 1])] * 3
    preds = [Detections(np.zeros((4, 4)), [0, 0, 1, 0], [0.9, 0.8, 0.7, 0.2])] * 3
    t = choose_conf(preds, records, 3)
    assert 0.2 < t <= 0.7
