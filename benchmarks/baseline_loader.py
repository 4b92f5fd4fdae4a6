"""The plain torchvision two-view pipeline the fast loaders are measured against.

What a straightforward implementation of the recipe does: decode the full image with PIL,
then per view ``RandomResizedCrop`` (window kept for the coords, as the reference method
computes them), horizontal flip, ``RandomApply(ColorJitter)``, ``RandomGrayscale``,
``RandomApply(GaussianBlur)`` with the customary kernel of about 10% of the view size
(23 at 224), ``RandomSolarize``, ``ToTensor``, ``Normalize``; default collation of float
tensors; the batch moved to the device and made channels-last in the main process.
Randomness comes from torch's per-worker generators (not reproducible across worker
counts; the baseline only needs to be fair in cost).
"""
from __future__ import annotations

import os

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from pipelines.batch import Batch
from pipelines.image_folder import list_images
from pipelines.recipe import BYOL, Recipe, ViewSpec
from pipelines.geometry import window_to_coords


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the view (23 at 224), as SimCLR / BYOL use."""
    return int(0.1 * image_size) // 2 * 2 + 1


def colour_transform(view: ViewSpec, image_size: int, mean, std) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomApply([transforms.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                               p=view.jitter_p),
        transforms.RandomGrayscale(p=view.grayscale_p),
        transforms.RandomApply([transforms.GaussianBlur(blur_kernel_size(image_size), sigma=view.blur_sigma)],
                               p=view.blur_p),
        transforms.RandomSolarize(view.solarize_threshold, p=view.solarize_p),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class BaselineDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir, image_size: int, recipe: Recipe):
        self.paths = list_images(data_dir)
        self.size, self.recipe = image_size, recipe
        self.colour = [colour_transform(v, image_size, recipe.mean, recipe.std) for v in recipe.views]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = Image.open(self.paths[index]).convert("RGB")
        width, height = img.size
        out = []
        for view, colour in zip(self.recipe.views, self.colour):
            top, left, h, w = transforms.RandomResizedCrop.get_params(img, list(view.crop_scale),
                                                                      list(view.crop_ratio))
            v = F.resized_crop(img, top, left, h, w, [self.size, self.size], InterpolationMode.BILINEAR,
                               antialias=True)
            flip = bool(torch.rand(1).item() < view.flip_p)
            if flip:
                v = F.hflip(v)
            out.append((colour(v), torch.tensor(window_to_coords(top, left, h, w, height, width, flip))))
        (v1, c1), (v2, c2) = out
        return v1, v2, c1, c2, index


class BaselineLoader:
    """Yields :class:`pipelines.batch.Batch` like the real loaders (same length semantics)."""

    def __init__(self, data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL, *,
                 device="cpu", num_workers: int | None = None, seed: int = 0, drop_last: bool = True,
                 pin_memory: bool | None = None, persistent_workers: bool = True):
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dataset = BaselineDataset(data_dir, image_size, recipe)
        num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        generator = torch.Generator().manual_seed(seed)
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=drop_last,
            num_workers=num_workers, pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
            persistent_workers=persistent_workers and num_workers > 0)

    def __len__(self) -> int:
        return len(self._loader)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        pass  # the baseline reshuffles from its own generator; resume is not its concern

    def __iter__(self):
        for v1, v2, c1, c2, index in self._loader:
            yield Batch((v1, v2), (c1, c2), index).to(self.device)


def build_baseline_loader(data_dir, batch_size: int, image_size: int = 224, recipe: Recipe = BYOL,
                          **options) -> BaselineLoader:
    return BaselineLoader(data_dir, batch_size, image_size, recipe, **options)
