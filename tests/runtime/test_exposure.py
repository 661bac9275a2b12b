"""Dark or colour-cast fields: brought to the training images' background before detection, in prediction,
scoring, training and int8 calibration alike, and recorded in the results."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bloodcell
from bloodcell.cli import main
from bloodcell.runtime import scaling
from bloodcell.runtime.exposure import (
    BACKGROUND_REFERENCE,
    BALANCE_RANGE,
    CAST_TOLERANCE,
    DARK_BELOW,
    DARKEST_MEASURED,
    WHITE_REFERENCE,
    background_colour,
    exposure_gains,
    normalize_exposure,
)
from bloodcell.runtime.images import load_image


def dimmed(rgb: np.ndarray, exposure: float | tuple[float, float, float]) -> np.ndarray:
    """The field as a shorter exposure, a dimmer lamp (one number) or a lamp of another colour (one per channel)
    gives it."""
    return np.clip(rgb.astype(np.float32) * np.asarray(exposure, np.float32) + 0.5, 0, 255).astype(np.uint8)


def white(image: np.ndarray) -> float:
    return float(np.dot(background_colour(image), [0.299, 0.587, 0.114]))


def shares(image: np.ndarray) -> np.ndarray:
    colour = np.array(background_colour(image))
    return colour / colour.mean()


@pytest.fixture(scope="module")
def field(bccd_root: Path) -> np.ndarray:
    return load_image(bccd_root / "JPEGImages" / "BloodImage_00007.jpg")


@pytest.fixture(scope="module")
def shipped() -> bloodcell.Predictor:
    return bloodcell.load_predictor()


def test_the_background_is_the_brightest_tenth_of_the_pixels() -> None:
    image = np.full((480, 640, 3), 100, np.uint8)
    image[:72] = (220, 210, 200)  # a bright band of 15% of the pixels
    assert background_colour(image) == pytest.approx((220, 210, 200), abs=0.5)
    assert background_colour(np.full((4000, 3000, 3), (200, 100, 50), np.uint8)) == pytest.approx((200, 100, 50))


def test_a_training_microscope_field_is_left_as_it_is(field: np.ndarray) -> None:
    assert DARK_BELOW < white(field) <= 255
    assert np.abs(shares(field) - np.array(BACKGROUND_REFERENCE) / np.mean(BACKGROUND_REFERENCE)).max() < CAST_TOLERANCE
    same, exposure = normalize_exposure(field)
    assert same is field and exposure.gains == (1.0, 1.0, 1.0) and exposure.warning is None


@pytest.mark.parametrize("exposure", [0.5, 0.25, 0.1])
def test_a_dark_field_is_brought_to_the_reference_white_level(field: np.ndarray, exposure: float) -> None:
    dark = dimmed(field, exposure)
    bright, said = normalize_exposure(dark)
    assert said.gains == pytest.approx((WHITE_REFERENCE / white(dark),) * 3)
    assert white(bright) == pytest.approx(WHITE_REFERENCE, rel=0.02)
    # one gain for the three channels: the stain's colour (channel ratios) stays
    assert np.abs(shares(bright) - shares(dark)).max() < 0.01
    assert said.warning is None  # measured to count right down to 5% exposure


def test_a_warm_lamp_gets_the_training_images_white_balance(field: np.ndarray) -> None:
    warm = dimmed(field, (1.12, 1.0, 0.85))
    balanced, said = normalize_exposure(warm)
    reference = np.array(BACKGROUND_REFERENCE) / np.mean(BACKGROUND_REFERENCE)
    assert np.abs(shares(warm) - reference).max() > CAST_TOLERANCE
    assert np.abs(shares(balanced) - reference).max() < 0.01
    assert said.gains[0] < 1.0 < said.gains[2] and white(balanced) == pytest.approx(white(warm), rel=0.02)


def test_white_balance_moves_a_channel_by_a_bounded_factor() -> None:
    """Where cells fill the frame its brightest tenth is cells: a misread background recolours the stain
    by at most BALANCE_RANGE."""
    red, green, blue = exposure_gains((200.0, 200.0, 1.0))  # no blue light: blue is raised by the bound only
    assert blue == BALANCE_RANGE[1] and red < 1.0 and green < 1.0  # red and green meet the training images'
    assert red / green == pytest.approx(BACKGROUND_REFERENCE[0] / BACKGROUND_REFERENCE[1])  # balance between them
    for background in [(230.0, 180.0, 120.0), (150.0, 210.0, 240.0), (205.0, 200.0, 199.0)]:
        low, high = BALANCE_RANGE
        assert all(low - 1e-9 <= g <= high + 1e-9 for g in exposure_gains(background)), background


def test_a_black_or_nearly_black_field_is_said_not_multiplied_without_end() -> None:
    black = np.zeros((48, 64, 3), np.uint8)
    same, exposure = normalize_exposure(black)
    assert same is black and exposure.gains == (1.0, 1.0, 1.0) and "under-exposed" in exposure.warning
    _, faint = normalize_exposure(np.full((48, 64, 3), int(DARKEST_MEASURED) - 2, np.uint8))
    assert min(faint.gains) > 10 and "raise the lamp or the exposure time" in faint.warning


def test_a_quarter_exposure_counts_as_the_field_does(shipped, field: np.ndarray, monkeypatch) -> None:
    """The shipped model on a field at 25% exposure: as the full one once brightened; not without it."""
    dark = dimmed(field, 0.25)
    full, quarter = bloodcell.predict(shipped, [field, dark])  # batched: the torch predictor's batch path
    [alone] = bloodcell.predict(shipped, dark)  # one by one
    assert quarter.exposure_gains == pytest.approx((4.0,) * 3, rel=0.05) and full.exposure_gains == (1.0, 1.0, 1.0)
    assert quarter.counts == alone.counts
    assert abs(quarter.counts["RBC"] - full.counts["RBC"]) <= 1
    assert {k: quarter.counts[k] for k in ("WBC", "Platelets")} == {k: full.counts[k] for k in ("WBC", "Platelets")}
    assert quarter.to_record()["exposure_gains"] == [round(g, 3) for g in quarter.exposure_gains]
    assert not quarter.warnings
    monkeypatch.setattr(scaling, "normalize_exposure", lambda image: (image, normalize_exposure(field)[1]))
    [unbrightened] = bloodcell.predict(shipped, dark)
    assert sum(unbrightened.counts.values()) < sum(full.counts.values()) - 2  # what the gain is for


def test_predict_json_records_the_gain_and_warns_of_a_black_field(field: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(dimmed(field, 0.3)).save(tmp_path / "dim.png")
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(tmp_path / "black.png")
    js = tmp_path / "r.json"
    assert main(["predict", str(tmp_path / "dim.png"), str(tmp_path / "black.png"), "--json", str(js)]) == 0
    dim, black = json.loads(js.read_text())
    assert dim["exposure_gains"] == pytest.approx([1 / 0.3] * 3, rel=0.05) and dim["warnings"] == []
    assert black["exposure_gains"] == [1.0] * 3 and any("under-exposed" in w for w in black["warnings"])
