"""A torch Dataset over VOC records: decoded images cached in memory, presets applied per sample."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from bloodcell.data.voc import VOCRecord
from bloodcell.runtime.exposure import normalize_exposure
from bloodcell.runtime.images import load_image


class DetectionDataset(torch.utils.data.Dataset):
    """Yields (uint8 image (3, H, W), {'boxes': BoundingBoxes xyxy, 'labels': int64}).

    Images are decoded once and kept (BCCD train is ~190 MB as uint8): on a 2-core machine
    JPEG decoding would otherwise cost as much as the augmentation.
    """

    def __init__(self, records: list[VOCRecord], transforms=None, cache: bool = True, num_classes: int = 3) -> None:
        self.records = records
        self.num_classes = num_classes
        self.transforms = transforms
        self._cache: dict[int, torch.Tensor] = {}
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def preload(self) -> None:
        """Decode every image now, so DataLoader workers (forked) share one cache instead of re-decoding."""
        for i in range(len(self)):
            self.image(i)

    def image(self, index: int) -> torch.Tensor:
        if index in self._cache:
            return self._cache[index]
        # the same decoding (EXIF, modes) and exposure as prediction: a dark microscope trains as it is counted
        pixels, _ = normalize_exposure(load_image(self.records[index].image_path))
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
        if self.cache:
            self._cache[index] = tensor
        return tensor

    def __getitem__(self, item: int | tuple[int, int]):
        """``item``: an index, or (index, seed) from ``SeededSampler``: the augmentation then
        depends on the seed alone, not on the process or the RNG state it runs in."""
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._sample(index)
        return self._sample(item)

    def _sample(self, index: int):
        record = self.records[index]
        image = tv_tensors.Image(self.image(index))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(record.boxes), format="XYXY", canvas_size=(record.height, record.width)
            ),
            "labels": torch.from_numpy(record.labels),
            "exhaustive": torch.from_numpy(record.exhaustive_mask(self.num_classes)),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return F.to_dtype(image, torch.uint8), target


class SeededSampler(torch.utils.data.Sampler):
    """Yields (index, seed) pairs from ``sampler`` with seed = f(seed, epoch, index): augmentations
    no longer depend on which loader worker draws a sample, so workers can persist across epochs
    (no start-up per epoch) and a resumed epoch replays exactly."""

    def __init__(self, sampler: torch.utils.data.DistributedSampler, seed: int) -> None:
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        base = (self.seed * 100_003 + self.epoch) * 1_000_003
        return ((i, (base + i) % 2**63) for i in self.sampler)  # torch seeds are 64-bit


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack same-size images (float 0..255) and keep targets as a list."""
    images = torch.stack([img for img, _ in batch]).float()
    targets = [
        {"boxes": t["boxes"].as_subclass(torch.Tensor).float(), "labels": t["labels"], "exhaustive": t["exhaustive"]}
        for _, t in batch
    ]
    return images, targets
