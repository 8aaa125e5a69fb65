"""CompressAI's published Kodak curves in the shape of a results file.

The numbers live in :data:`varicodec.quality.KODAK_CURVES`; which architecture has
which curve is the registry's (:attr:`~varicodec.models.registry.Architecture.reference`).
"""

from __future__ import annotations

from ..models.registry import ARCHITECTURES

__all__ = ["PUBLISHED_KODAK", "REFERENCE_NAMES", "reference_results"]

#: registry architecture → quality 1..k → ``(bpp, psnr_db)``
PUBLISHED_KODAK: dict[str, tuple[tuple[float, float], ...]] = {
    name: a.reference for name, a in ARCHITECTURES.items()
}

#: registry architecture → CompressAI's name of it
REFERENCE_NAMES: dict[str, str] = {name: a.compressai_name for name, a in ARCHITECTURES.items()}


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
