"""Training with incomplete labels: how CellNetLoss treats unmatched points of non-exhaustive classes."""

import pytest
import torch

from bloodcell.models.cellnet import CellNetConfig
from bloodcell.models.cellnet_loss import CellNetLoss

SIZE = (64, 64)
STRIDES = (8, 16, 32)
A = sum((64 // s) ** 2 for s in STRIDES)


def setup(exhaustive):
    """One labelled RBC top-left; the model is confident (logit 2) of RBC everywhere, also where
    nothing is labelled; the teacher agrees only on a bottom-right patch (an unlabelled cell)."""
    cls = torch.full((1, A, 3), -6.0)
    cls[..., 0] = 2.0
    box = torch.zeros(1, A, 4)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 24.0, 24.0]]), "labels": torch.tensor([0]),
                "exhaustive": torch.tensor(exhaustive)}]  # fmt: skip
    teacher = torch.full((1, A, 3), 0.01)
    teacher[0, 40:56, 0] = 0.9  # stride-8 points in rows 5-6: the unlabelled cell
    return cls, box, targets, teacher


def loss(method, exhaustive=(False, True, False), tau=0.3):
    cls, box, targets, teacher = setup(list(exhaustive))
    criterion = CellNetLoss(CellNetConfig(), STRIDES, missing=method, tau=tau)
    return criterion(cls, box, targets, SIZE, teacher=teacher)["cls"]


def test_exhaustive_images_train_the_same_whatever_the_method():
    plain = loss("plain", (True, True, True))
    for method in ("ignore", "pseudo", "downweight"):
        assert torch.allclose(loss(method, (True, True, True)), plain)


def test_ignore_drops_only_negatives_the_teacher_believes():
    plain, ignore = loss("plain"), loss("ignore")
    assert ignore < plain
    # with a teacher that believes nothing, ignore is plain again
    cls, box, targets, teacher = setup([False, True, False])
    crit = CellNetLoss(CellNetConfig(), STRIDES, missing="ignore", tau=0.3)
    same = crit(cls, box, targets, SIZE, teacher=torch.zeros_like(teacher))["cls"]
    assert torch.allclose(same, plain)


def test_pseudo_turns_confident_teacher_points_into_soft_positives():
    _, _, targets, teacher = setup([False, True, False])
    crit = CellNetLoss(CellNetConfig(), STRIDES, missing="pseudo", tau=0.3)
    cls_target, weight = torch.zeros(1, A, 3), torch.ones(1, A, 3)
    crit._missing_labels(cls_target, weight, targets, teacher)
    assert torch.allclose(cls_target[0, 40:56, 0], torch.tensor(0.9))
    assert (weight[0, 40:56, 0] == 1).all() and (cls_target[0, :40, 0] == 0).all()
    assert (cls_target[..., 1] == 0).all()  # WBC is exhaustive: untouched


def test_downweight_scales_the_negatives_of_partial_classes():
    cls_target, weight = torch.zeros(1, A, 3), torch.ones(1, A, 3)
    _, _, targets, _ = setup([False, True, False])
    CellNetLoss(CellNetConfig(), STRIDES, missing="downweight", tau=0.9)._missing_labels(
        cls_target, weight, targets, None
    )
    assert torch.allclose(weight[..., 0], torch.tensor(0.1)) and (weight[..., 1] == 1).all()


def test_teacher_methods_need_a_teacher_and_names_are_checked():
    cls, box, targets, _ = setup([False, True, False])
    with pytest.raises(ValueError, match="teacher"):
        CellNetLoss(CellNetConfig(), STRIDES, missing="ignore")(cls, box, targets, SIZE)
    with pytest.raises(ValueError, match="choose from"):
        CellNetLoss(CellNetConfig(), STRIDES, missing="magic")


def test_the_teacher_runs_only_for_batches_with_missing_labels():
    from torch import nn

    from bloodcell.engine.train import compute_losses

    class Refusing(nn.Module):
        def forward(self, x):
            raise AssertionError("teacher ran on a fully labelled batch")

    cls, box, targets, _ = setup([True, True, True])
    model = nn.Module()
    model.forward = lambda images: (cls, box)  # type: ignore[method-assign]
    criterion = CellNetLoss(CellNetConfig(), STRIDES, missing="ignore", tau=0.3)
    images = torch.zeros(1, 3, *SIZE)
    losses = compute_losses(model, criterion, images, targets, teacher=Refusing())
    assert torch.allclose(losses["cls"], loss("plain", (True, True, True)))
    # a partial image needs it: without one the loss refuses rather than training plain
    _, _, partial, _ = setup([False, True, False])
    with pytest.raises(ValueError, match="needs teacher"):
        criterion(cls, box, partial, SIZE, teacher=None)
