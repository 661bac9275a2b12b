"""Augmentation presets chosen by name; every transform moves the image and its boxes together.

Built on torchvision.transforms.v2 (tv_tensors.BoundingBoxes), so boxes can never drift from
pixels. Microscopy has no "up": flips and 90-degree turns give all 8 orientations; stain and
illumination vary between labs, hence colour jitter; scale jitter covers other magnifications.
"""

from __future__ import annotations

import math

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bloodcell.errors import ConfigError


class RandomRotate90(v2.Transform):
    """Turn by k * 90 degrees, k uniform in {0, 1, 2, 3}."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(4, ()).item())}

    def transform(self, inpt, params: dict):
        if params["k"] == 0:
            return inpt
        out = F.rotate(inpt, angle=90.0 * params["k"], expand=True)
        if isinstance(inpt, tv_tensors.BoundingBoxes) and params["k"] % 2 and out.canvas_size == inpt.canvas_size:
            # torchvision keeps an empty box set's canvas unturned (an image without cells, which is valid VOC)
            out = tv_tensors.wrap(out, like=out, canvas_size=inpt.canvas_size[::-1])
        return out


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from ``scale_range`` (aspect ratio kept, any orientation)."""

    def __init__(self, scale_range: tuple[float, float] = (0.75, 1.25)) -> None:
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range  # log-uniform: 0.5x is as likely as 2x
        s = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(())))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params: dict):
        return F.resize(inpt, params["size"], antialias=True)


class RandomCropKeepVisible(v2.Transform):
    """Random ``size`` crop (padding small images) that drops boxes left less than ``min_visible`` visible.

    A sliver of a cell at the crop edge is not a cell; keeping it as a target would teach the
    model to fire on fragments.
    """

    def __init__(self, size: int | tuple[int, int], min_visible: float = 0.4) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.min_visible = min_visible

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        ch, cw = self.size
        top = int(torch.randint(max(h - ch, 0) + 1, ()).item())
        left = int(torch.randint(max(w - cw, 0) + 1, ()).item())
        return {"top": top, "left": left}

    def transform(self, inpt, params: dict):
        ch, cw = self.size
        out = F.crop(inpt, params["top"], params["left"], ch, cw)  # pads with zeros past the edge
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            before = _areas(inpt)
            out = F.clamp_bounding_boxes(out)
            visible = _areas(out) / before.clamp(min=1e-6)
            out.visible = visible >= self.min_visible  # read by DropInvisible
        return out


def _areas(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


class DropInvisible(v2.Transform):
    """Removes boxes (and their labels) marked invisible by RandomCropKeepVisible, then tiny ones."""

    def __init__(self, min_size: float = 2.0) -> None:
        super().__init__()
        self.min_size = min_size

    def forward(self, *inputs):
        image, target = inputs if len(inputs) > 1 else inputs[0]
        boxes = target["boxes"]
        keep = getattr(boxes, "visible", torch.ones(len(boxes), dtype=torch.bool))
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = keep & (wh >= self.min_size).all(dim=1)
        target = dict(target)
        target["boxes"] = tv_tensors.wrap(boxes[keep], like=boxes)
        target["labels"] = target["labels"][keep]
        return image, target


def make_transforms(preset: str, crop_size: int = 384, scale: float = 1.0) -> v2.Compose | None:
    """The augmentation policy called ``preset``: 'train' (full), 'light' (flips only), 'none'.
    ``scale``: the magnification the model learns at (TrainConfig.scale); scale jitter is around it."""
    fixed = [RandomScale((scale, scale))] if scale != 1.0 else []
    if preset == "none":  # still cropped: batches need one image size
        return v2.Compose([*fixed, RandomCropKeepVisible(crop_size), DropInvisible()])
    if preset == "light":
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                *fixed,
                RandomCropKeepVisible(crop_size),
                DropInvisible(),
            ]
        )
    if preset == "train-v1":  # the recipe of the first shipped model (kept to compare against)
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                RandomRotate90(),
                v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.3, hue=0.04),
                v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.2),
                RandomScale((0.75 * scale, 1.25 * scale)),
                RandomCropKeepVisible(crop_size),
                DropInvisible(),
            ]
        )
    if preset in ("train", "train-mild"):
        # Other microscopes: magnification (scale jitter), stain, white balance and exposure, focus,
        # compression and sensor noise. Geometry first, then pixel changes on the (smaller) crop.
        lo, hi = (0.6, 1.6) if preset == "train" else (0.75, 1.33)
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                RandomRotate90(),
                RandomScale((lo * scale, hi * scale)),
                RandomCropKeepVisible(crop_size),
                DropInvisible(),
                v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4, hue=0.08),
                v2.RandomApply([WhiteBalance((0.8, 1.25))], p=0.5),
                v2.RandomApply([v2.GaussianBlur(7, sigma=(0.1, 2.0))], p=0.25),
                v2.RandomApply([JpegQuality((30, 95))], p=0.2),
                v2.RandomApply([SensorNoise((2.0, 12.0))], p=0.2),
            ]
        )
    raise ConfigError(f"unknown augmentation preset {preset!r}; choose from {list(PRESETS)}")


PRESETS = ("train", "train-mild", "train-v1", "light", "none")


class SensorNoise(v2.Transform):
    """Additive Gaussian noise with a standard deviation (in 0..255 units) drawn from ``sigma``."""

    def __init__(self, sigma: tuple[float, float] = (2.0, 12.0)) -> None:
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs: list) -> dict:
        lo, hi = self.sigma
        return {"sigma": lo + (hi - lo) * float(torch.rand(()))}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        noisy = inpt.float() + torch.randn(inpt.shape) * params["sigma"]
        return tv_tensors.wrap(noisy.clamp(0, 255).to(inpt.dtype), like=inpt)


class WhiteBalance(v2.Transform):
    """Multiply each colour channel by its own gain drawn log-uniformly from ``gains``: another
    lamp, camera white balance or stain batch shifts the channels independently."""

    def __init__(self, gains: tuple[float, float] = (0.8, 1.25)) -> None:
        super().__init__()
        self.gains = gains

    def make_params(self, flat_inputs: list) -> dict:
        lo, hi = math.log(self.gains[0]), math.log(self.gains[1])
        return {"gain": torch.exp(lo + (hi - lo) * torch.rand(3)).view(3, 1, 1)}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        out = inpt.float() * params["gain"]
        return tv_tensors.wrap(out.clamp(0, 255).to(inpt.dtype), like=inpt)


class JpegQuality(v2.Transform):
    """Compress and decode at a JPEG quality drawn from ``quality`` (compression artefacts of other
    cameras). OpenCV's codec: torchvision's image encoders, which v2.JPEG uses, are deprecated."""

    def __init__(self, quality: tuple[int, int] = (30, 95)) -> None:
        super().__init__()
        self.quality = quality

    def make_params(self, flat_inputs: list) -> dict:
        return {"quality": int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        import cv2

        bgr = cv2.cvtColor(inpt.permute(1, 2, 0).contiguous().numpy(), cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, params["quality"]])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a {bgr.shape} image")
        rgb = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return tv_tensors.wrap(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), like=inpt)
