import numpy as np
import pytest
import torch

from bloodcell.models.cellnet import CellNet, CellNetConfig, decode_boxes, make_points
from bloodcell.models.cellnet_loss import CellNetLoss
from bloodcell.runtime import postprocess


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CellNet(CellNetConfig(), pretrained=False).eval()


def test_output_shapes_follow_the_points(model):
    with torch.no_grad():
        cls, box = model(torch.rand(2, 3, 480, 640) * 255)
    points, _strides = make_points(480, 640, model.strides)
    assert cls.shape == (2, len(points), 3)
    assert box.shape == (2, len(points), 4)
    assert len(points) == 80 * 60 + 40 * 30 + 20 * 15


def test_numpy_decoder_matches_torch_decoder():
    torch.manual_seed(1)
    points, strides = make_points(160, 320, (8, 16, 32))
    box = torch.randn(len(points), 4)
    want = decode_boxes(box, points, strides).numpy()
    np_points, np_strides = postprocess.make_points(160, 320, (8, 16, 32))
    np.testing.assert_allclose(np_points, points.numpy())
    d = np.exp(box.numpy()) * np_strides[:, None]
    got = np.concatenate([np_points - d[:, :2], np_points + d[:, 2:]], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_decode_keeps_best_box_and_suppresses_duplicates():
    points, _strides = postprocess.make_points(128, 128, (8, 16, 32))
    cls = np.full((len(points), 3), -10.0, np.float32)
    box = np.zeros((len(points), 4), np.float32)
    # two neighbouring stride-8 points (centres 8 px apart) predicting 40 px boxes: IoU 0.67
    for idx, logit in ((68, 3.0), (69, 1.0)):
        cls[idx, 2] = logit
        box[idx] = np.log(np.array([20.0, 20.0, 20.0, 20.0]) / 8)
    dets = postprocess.decode(cls, box, (128, 128), (8, 16, 32), postprocess.PostprocessConfig(min_score=0.05))
    assert len(dets) == 1
    np.testing.assert_allclose(dets.boxes[0], [16, 16, 56, 56], atol=1e-4)
    assert dets.labels[0] == 2
    assert dets.scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)


def test_assignment_puts_small_boxes_on_stride_8_and_large_on_coarser_levels():
    cfg = CellNetConfig()
    loss = CellNetLoss(cfg, (8, 16, 32))
    points, strides, ranges = loss._grid(480, 640, torch.device("cpu"))
    gt = torch.tensor([[100.0, 100.0, 140.0, 140.0], [300.0, 150.0, 520.0, 370.0]])  # platelet, WBC
    matched = loss.assign(points, strides, ranges, gt)
    assert set(strides[matched == 0].tolist()) == {8.0}
    assert strides[matched == 1].min() >= 16
    assert (matched == 0).sum() > 3 and (matched == 1).sum() > 3


def test_box_regression_cannot_die():
    """With exp decoding even very negative outputs keep a gradient (ReLU would give zero)."""
    box = torch.full((1, 1, 4), -5.0, requires_grad=True)
    decoded = decode_boxes(box[0], torch.tensor([[50.0, 50.0]]), torch.tensor([8.0]))
    decoded.sum().backward()
    assert (box.grad.abs() > 0).all()


def test_loss_falls_when_fitting_one_image():
    torch.manual_seed(0)
    model = CellNet(CellNetConfig(neck_channels=32), pretrained=False)
    crit = CellNetLoss(model.config, model.strides)
    images = torch.rand(1, 3, 128, 128) * 255
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 80.0, 90.0], [90.0, 90.0, 115.0, 118.0]]), "labels": torch.tensor([0, 2])}
    ]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    first = None
    for _ in range(30):
        losses = crit(*model(images), targets, (128, 128))
        total = sum(losses.values())
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.5 * first


def test_empty_targets_give_finite_loss(model):
    crit = CellNetLoss(model.config, model.strides)
    cls, box = model(torch.rand(1, 3, 128, 128) * 255)
    losses = crit(cls, box, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], (128, 128))
    assert all(torch.isfinite(v) for v in losses.values())
