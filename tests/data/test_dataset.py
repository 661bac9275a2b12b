"""The training Dataset: images decoded as prediction decodes them."""

from pathlib import Path

import numpy as np
from PIL import Image
from voc_factory import make_voc

from bloodcell.data.dataset import DetectionDataset
from bloodcell.data.voc import load_voc
from bloodcell.runtime.exposure import normalize_exposure
from bloodcell.runtime.images import load_image


def test_training_reads_a_dark_image_as_prediction_does(tmp_path: Path, bccd_root: Path) -> None:
    """A dark microscope's training images are brightened as its fields will be when counted."""
    field = load_image(bccd_root / "JPEGImages" / "BloodImage_00007.jpg")[:48, :64]
    voc = make_voc(tmp_path, n_images=1, splits=False)
    Image.fromarray((field * 0.3).astype(np.uint8)).save(voc.image_path("img0"), quality=95)
    [record] = load_voc(tmp_path).records
    seen = DetectionDataset([record]).image(0).permute(1, 2, 0).numpy()
    expected, exposure = normalize_exposure(load_image(record.image_path))
    assert min(exposure.gains) > 2 and np.array_equal(seen, expected)
