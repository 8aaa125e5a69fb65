"""Training data: random crops of a folder of images.

Most of our training images are JPEGs (BSDS500 at quality ~95, SUN at ~75).
A random downscale (by default 0.5–1×) before cropping averages away most of
their block artefacts, which a codec would otherwise learn to spend bits on.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..util import IMAGE_SUFFIXES, list_images

__all__ = ["RandomCropFolder", "ResumableSampler", "list_images", "usable_images",
           "report_images", "IMAGE_SUFFIXES"]



def usable_images(folder: str | Path, crop: int, read) -> tuple[list, int, list[str]]:
    """Read the images of ``folder`` that are at least ``crop`` px on each side.

    ``read(path)`` returns ``(width, height)`` or an ``H×W×C`` array. Returns
    ``([(path, read(path)), …], number too small, names unreadable)``; an empty
    result is a ``ValueError``.
    """
    found, small, bad = [], 0, []
    for p in list_images(folder):
        try:
            item = read(p)
        except (OSError, UnidentifiedImageError, ValueError):
            bad.append(p.name)
            continue
        w, h = item if isinstance(item, tuple) else (item.shape[1], item.shape[0])
        if min(w, h) < crop:
            small += 1
            continue
        found.append((p, item))
    if not found:
        raise ValueError(f"no usable training images in {folder} (crop {crop}px)")
    return found, small, bad


def report_images(folder, what: str, small: int, bad: list[str], crop: int) -> None:
    """One line on stderr: how many images are used, how many skipped and why."""
    msg = f"{folder}: {what}"
    if small:
        msg += f", {small} skipped (smaller than the {crop}px crop)"
    if bad:
        msg += f", {len(bad)} unreadable skipped: {', '.join(bad[:10])}"
    print(msg, file=sys.stderr)


class RandomCropFolder(Dataset):
    """Random ``crop×crop`` RGB patches in [0, 1], with random downscale and flips.

    Images smaller than the crop are skipped (their number is reported);
    unreadable files are reported by name and skipped, never a crash.
    """

    def __init__(self, folder: str | Path, crop: int = 256,
                 scale: tuple[float, float] = (0.5, 1.0), verbose: bool = True) -> None:
        self.crop = int(crop)
        self.scale = (float(scale[0]), float(scale[1]))

        def size(p: Path) -> tuple[int, int]:
            with Image.open(p) as im:
                return im.size

        found, small, bad = usable_images(folder, self.crop, size)
        self.files = [p for p, _ in found]
        self.sizes = [wh for _, wh in found]
        if verbose:
            report_images(folder, f"{len(found)} training images", small, bad, self.crop)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> Image.Image:
        with Image.open(self.files[i]) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int) -> torch.Tensor:
        for _ in range(10):
            try:
                im = self._load(i)
                break
            except (OSError, UnidentifiedImageError, ValueError) as e:
                print(f"warning: cannot read {self.files[i]} ({e}); using another image",
                      file=sys.stderr)
                i = random.randrange(len(self.files))
        else:
            raise RuntimeError("too many unreadable training images in a row")
        w, h = im.size
        lo = max(self.scale[0], self.crop / min(w, h))
        s = random.uniform(lo, max(lo, self.scale[1]))
        if s < 0.999:
            im = im.resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))),
                           Image.Resampling.BICUBIC, reducing_gap=None)
        w, h = im.size
        x0, y0 = random.randint(0, w - self.crop), random.randint(0, h - self.crop)
        a = np.asarray(im.crop((x0, y0, x0 + self.crop, y0 + self.crop)), dtype=np.uint8)
        if random.random() < 0.5:
            a = a[:, ::-1]
        if random.random() < 0.5:
            a = a[::-1]
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255)


class ResumableSampler(torch.utils.data.Sampler):
    """An endless stream of shuffled indices that can restart mid-stream.

    Epoch ``e`` is a permutation drawn from ``seed + e``; ``start`` skips that
    many indices, so a resumed run sees the same images in the same order.
    """

    def __init__(self, size: int, seed: int, start: int = 0) -> None:
        self.size, self.seed, self.start = size, seed, start

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62

    def __iter__(self):
        epoch, skip = divmod(self.start, self.size)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            yield from torch.randperm(self.size, generator=g)[skip:].tolist()
            epoch, skip = epoch + 1, 0
