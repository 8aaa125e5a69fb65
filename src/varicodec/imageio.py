"""The one image loader: files → 8-bit RGB arrays / tensors, and back.

(Minimal version; the codec extends it with every Pillow mode, EXIF
orientation and the warnings that go with conversions.)
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["load_rgb", "to_tensor", "to_uint8", "pad_to_multiple"]


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``H×W×3`` uint8 array (EXIF orientation applied)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 → ``1×3×H×W`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``1×3×H×W`` float in [0, 1] → ``H×W×3`` uint8 (rounded, clamped)."""
    return x[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``B×C×H×W`` on the bottom/right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
