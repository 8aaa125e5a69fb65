"""Sample images for the page: nothing downloaded, nothing from the test data.

* ``grace-hopper`` — the portrait of Grace Hopper that Matplotlib ships as sample
  data (``mpl-data/sample_data/grace_hopper.jpg``, 512×600; a U.S. Navy photograph,
  public domain). Matplotlib is a dependency of the project.
* ``synthetic`` — :func:`varicodec.demo.synthetic_image` at 768×512: gradients,
  edges, discs and fine texture, drawn on the spot.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLES", "load_sample"]

#: name → description shown on the page
SAMPLES = {
    "grace-hopper": "Grace Hopper, 512×600 photo (public domain; ships with Matplotlib)",
    "synthetic": "Synthetic test picture, 768×512 (drawn by varicodec)",
}


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_sample(name: str) -> np.ndarray:
    """The sample called ``name`` as ``H×W×3`` uint8; ``ValueError`` if unknown or missing."""
    if name == "synthetic":
        from ..demo import synthetic_image

        return synthetic_image(768, 512)
    if name == "grace-hopper":
        try:
            return _grace_hopper()
        except (OSError, ValueError) as e:
            raise ValueError(f"sample {name!r} is not available here ({e})") from None
    raise ValueError(f"unknown sample {name!r}; choose from {', '.join(SAMPLES)}")
