"""Training crops cut on the training device from images decoded once into its memory.

The folder loader (:class:`~varicodec.train.data.RandomCropFolder`) decodes a
JPEG and resizes it on a CPU core for every crop; on a GPU that, not the model,
sets the pace. :class:`InMemoryCrops` decodes every training image once, keeps
it as ``uint8`` on the device (the 549 images of our training set take about
0.4 GB) and cuts each batch there with the same augmentation: a random
downscale (antialiased bicubic; removes JPEG block artefacts), a random crop and
random flips.

The random draws of batch ``k`` come from ``seed`` and ``k`` alone, so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import report_images, usable_images

__all__ = ["InMemoryCrops"]


class InMemoryCrops:
    """Random ``crop×crop`` RGB batches in [0, 1], cut on ``device``.

    Args:
        folder: a folder of PNG/JPEG images (unreadable and too small ones are
            skipped and reported).
        crop: side of the square crops.
        scale: range of the random downscale applied before cropping; the lower
            end is raised per image so that the crop still fits.
        device: where the images live and the crops are cut.
        seed: with the batch index, fixes every random draw.
    """

    def __init__(self, folder: str | Path, crop: int = 256,
                 scale: tuple[float, float] = (0.5, 1.0), device: str | torch.device = "cpu",
                 seed: int = 0, verbose: bool = True) -> None:
        self.crop = int(crop)
        self.scale = (float(scale[0]), float(scale[1]))
        self.device = torch.device(device)
        self.seed = int(seed)

        def decode(p: Path) -> np.ndarray:
            with Image.open(p) as im:
                return np.array(im.convert("RGB"), dtype=np.uint8)

        found, small, bad = usable_images(folder, self.crop, decode)
        self.images = [torch.from_numpy(a).permute(2, 0, 1).contiguous().to(self.device)
                       for _, a in found]
        if verbose:
            mb = sum(t.numel() for t in self.images) / 1e6
            report_images(folder, f"{len(found)} training images in memory ({mb:.0f} MB)",
                          small, bad, self.crop)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: int, size: int) -> torch.Tensor:
        """Batch number ``index``: ``size×3×crop×crop`` floats on the device."""
        rng = random.Random(self.seed * 1_000_003 + int(index))
        c = self.crop
        out = torch.empty(size, 3, c, c, device=self.device)
        for b in range(size):
            img = self.images[rng.randrange(len(self.images))]
            h, w = img.shape[-2:]
            lo = max(self.scale[0], c / min(w, h))
            s = rng.uniform(lo, max(lo, self.scale[1]))
            side = min(h, w, max(c, round(c / s)))   # source square that becomes the crop
            top, left = rng.randint(0, h - side), rng.randint(0, w - side)
            patch = img[None, :, top:top + side, left:left + side].float()
            if side != c:
                patch = F.interpolate(patch, size=(c, c), mode="bicubic", antialias=True,
                                      align_corners=False)
            dims = [d for d, flip in ((3, rng.random() < 0.5), (2, rng.random() < 0.5)) if flip]
            if dims:
                patch = patch.flip(dims)
            out[b] = patch[0]
        return out.div_(255).clamp_(0, 1)
