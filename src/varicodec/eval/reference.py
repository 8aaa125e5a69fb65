"""CompressAI's published Kodak results, as data.

Source: CompressAI's pre-trained MSE models (quality 1–8) evaluated on the 24
Kodak images with the real entropy coder on CPU, as published in the CompressAI
repository (https://github.com/InterDigitalInc/CompressAI) under
``results/image/kodak/compressai-{bmshj2018-hyperprior,mbt2018-mean,mbt2018}_mse_cpu.json``
and quoted, rounded to 4 / 2 decimals, in this project's ``SPEC.md``. Rate is
real bitstream bpp, PSNR is RGB in dB. Those models were trained on GPUs for
millions of steps.
"""

from __future__ import annotations

__all__ = ["PUBLISHED_KODAK", "REFERENCE_NAMES", "reference_results"]

#: architecture → quality 1..8 → ``(bpp, psnr_db)``
PUBLISHED_KODAK: dict[str, tuple[tuple[float, float], ...]] = {
    "hyperprior": (  # bmshj2018-hyperprior
        (0.1313, 27.58), (0.2089, 29.20), (0.3199, 30.97), (0.4784, 32.84),
        (0.6687, 34.53), (0.9388, 36.74), (1.2592, 38.58), (1.6602, 40.56),
    ),
    "mean": (  # mbt2018-mean
        (0.1239, 27.70), (0.1980, 29.36), (0.3072, 31.13), (0.4606, 32.95),
        (0.6617, 34.97), (0.9144, 36.91), (1.2342, 38.84), (1.6191, 40.63),
    ),
    "joint": (  # mbt2018
        (0.1105, 28.09), (0.1870, 29.65), (0.2877, 31.36), (0.4323, 33.09),
        (0.6388, 35.09), (0.8853, 36.99), (1.2004, 38.93), (1.5873, 40.64),
    ),
}

#: CompressAI's names of the architectures
REFERENCE_NAMES = {
    "hyperprior": "bmshj2018-hyperprior",
    "mean": "mbt2018-mean",
    "joint": "mbt2018",
}


def reference_results(arch: str) -> dict:
    """The published curve of ``arch`` in the shape of a results file (points only)."""
    if arch not in PUBLISHED_KODAK:
        raise ValueError(f"no published curve for {arch!r}; choose from {sorted(PUBLISHED_KODAK)}")
    return {
        "schema": "varicodec-eval/1",
        "label": f"CompressAI {REFERENCE_NAMES[arch]} (published)",
        "kind": "reference",
        "model": {"arch": arch, "name": REFERENCE_NAMES[arch]},
        "points": [
            {"quality": q, "bpp": bpp, "psnr_db": psnr}
            for q, (bpp, psnr) in enumerate(PUBLISHED_KODAK[arch], start=1)
        ],
    }
