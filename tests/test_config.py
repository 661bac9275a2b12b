"""TrainConfig checks every setting when built, before any data is read, with the checks its flags declare."""

from __future__ import annotations

import pytest

from bloodcell.config import AUGMENT_PRESETS, MODEL_NAMES, TrainConfig
from bloodcell.errors import ConfigError


def test_choices_match_the_modules_that_use_them() -> None:
    """config keeps copies (it must import without torch); these tests keep them equal."""
    from bloodcell.data.transforms import PRESETS, make_transforms
    from bloodcell.models.registry import MODELS

    assert tuple(MODELS) == MODEL_NAMES
    assert AUGMENT_PRESETS == PRESETS
    for preset in AUGMENT_PRESETS:
        assert make_transforms(preset, 64) is not None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"augment": "strong"}, "--augment strong: choose from train, train-mild, train-v1, light, none"),
        ({"model": "cellnet2"}, "--model cellnet2: choose from cellnet, cellnet-mnv2, fasterrcnn or FILE.pt"),
        ({"device": "gpu"}, "--device gpu: choose from auto, cpu, cuda or cuda:N"),
        ({"missing_labels": "guess"}, "--missing-labels guess: choose from plain, ignore, pseudo, downweight"),
        ({"epochs": 0}, "--epochs 0: expected an integer >= 1"),
        ({"epochs": 2.5}, "--epochs 2.5: expected an integer >= 1"),
        ({"lr": float("nan")}, "--lr nan: expected a number > 0"),
        ({"missing_tau": 1.0}, "--missing-tau 1: expected a number in (0, 1)"),
        ({"ema_decay": 1.0}, "--ema-decay 1: expected a number in [0, 1)"),
        ({"imgsz": 100}, "--imgsz 100: expected a multiple of 32"),
        ({"input_size": (640, 470)}, "--input-size 640x470: width and height must be multiples of 32"),
        ({"threads": 0}, "--threads 0: expected an integer >= 1"),
        ({"scale": 3}, "--scale 3: expected a number in [0.25, 2]"),
    ],
)
def test_bad_settings_fail_when_built(settings, message) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(data="/nonexistent/slow/share", **settings)
    assert str(info.value) == message


def test_good_settings_and_saved_ones_are_accepted() -> None:
    config = TrainConfig(model="runs/a/best.pt", device="cuda:1", input_size=[320, 256], lr=1, threads=None)
    assert config.input_size == (320, 256)
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("scale", "imgsz", "input_size"), [(1.0, 448, (640, 480)), (0.75, 352, (480, 384)), (0.6, 288, (384, 288))]
)
def test_scale_sets_crops_and_input_unless_given(scale, imgsz, input_size) -> None:
    """--scale shrinks the training images; crops and the 640x480 field follow (multiples of 32)."""
    config = TrainConfig(scale=scale)
    assert (config.imgsz, config.input_size) == (imgsz, input_size)
    given = TrainConfig(scale=scale, imgsz=256, input_size=(320, 256))
    assert (given.imgsz, given.input_size) == (256, (320, 256))


def test_a_fine_tuned_model_brings_its_scale_unless_one_is_given() -> None:
    inherited = TrainConfig(model="runs/a/best.pt")
    assert inherited.scale is None
    filled = inherited.with_model_scale(0.75, (480, 384))
    assert (filled.scale, filled.imgsz, filled.input_size) == (0.75, 352, (480, 384))
    assert TrainConfig(model="runs/a/best.pt", scale=0.5).with_model_scale(0.75, (480, 384)).scale == 0.5


def test_scaled_presets_jitter_around_the_scale() -> None:
    """A 'none' crop of a scale-0.5 model holds the image at half size: its boxes are halved."""
    import torch
    from torchvision import tv_tensors

    from bloodcell.data.transforms import make_transforms

    image = tv_tensors.Image(torch.zeros(3, 96, 128, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[20.0, 20.0, 60.0, 80.0]]), format="XYXY", canvas_size=(96, 128))
    out, target = make_transforms("none", 64, scale=0.5)(image, {"boxes": boxes, "labels": torch.tensor([0])})
    assert out.shape[-2:] == (64, 64)
    assert torch.allclose(target["boxes"], torch.tensor([[10.0, 10.0, 30.0, 40.0]]))


@pytest.mark.parametrize("preset", ["train", "train-mild", "train-v1", "light", "none"])
def test_an_image_without_cells_goes_through_every_preset(preset: str) -> None:
    """A field with no cells is valid VOC (no <object>): every orientation and crop must take it."""
    import torch
    from torchvision import tv_tensors

    from bloodcell.data.transforms import make_transforms

    transform = make_transforms(preset, 64, scale=0.75)
    for seed in range(12):  # all four turns come up
        torch.manual_seed(seed)
        image = tv_tensors.Image(torch.zeros(3, 96, 128, dtype=torch.uint8))
        boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(96, 128))
        out, target = transform(image, {"boxes": boxes, "labels": torch.zeros(0, dtype=torch.int64)})
        assert out.shape[-2:] == (64, 64) and target["boxes"].shape == (0, 4)


def test_configs_saved_before_scale_existed_load_at_scale_one() -> None:
    """A run saved by an older bloodcell fine-tuned at 1.0, whatever the model file says today."""
    saved = TrainConfig(model="runs/a/best.pt", scale=1.0).to_dict()
    del saved["scale"]
    assert TrainConfig.from_dict(saved).scale == 1.0


def test_sample_seeds_stay_64_bit_for_any_seed() -> None:
    from bloodcell.data.dataset import SeededSampler

    class Indices(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    sampler = SeededSampler(Indices([0, 5]), seed=10**15)
    sampler.set_epoch(3)
    seeds = [s for _, s in sampler]
    assert len(set(seeds)) == 2 and all(0 <= s < 2**63 for s in seeds)


def test_jpeg_augmentation_is_a_real_jpeg_round_trip() -> None:
    """The OpenCV codec gives what a camera saving at that quality gives (Pillow's libjpeg, same settings)."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from torchvision import tv_tensors

    from bloodcell.data.transforms import JpegQuality

    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal(128, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
    image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    for quality in (30, 90):
        out = JpegQuality((quality, quality))(image)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
        expected = np.asarray(Image.open(buffer))
        assert isinstance(out, tv_tensors.Image) and np.array_equal(out.permute(1, 2, 0).numpy(), expected)
        assert not np.array_equal(expected, rgb)


def test_paths_are_taken_as_the_cli_gives_file_names() -> None:
    from pathlib import Path

    config = TrainConfig(model=Path("runs/a/best.pt"), data=Path("d.yaml"), weights=None, out=Path("runs/b"))
    assert (config.model, config.data, config.out) == ("runs/a/best.pt", "d.yaml", "runs/b")
    assert config.scale is None  # a .pt given as a Path is a fine-tune, as its name says
