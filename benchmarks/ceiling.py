"""The transforms' ceiling: PSNR of g_s(g_a(x)) without quantisation, per model, at λ max.

No λ can code better than the synthesis transform reconstructs the *unquantised* latent,
so this ceiling shows how much of a curve's flattening at high rates is the transforms
(training budget) rather than the entropy model. For variable-rate models the latent is
modulated and demodulated at λ, as in coding.

    python benchmarks/ceiling.py checkpoints/gpu/hyperprior-ecgbm-128.safetensors \
        --images ../shared/data/kodak --out docs/results/gpu/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from varicodec import load_model
from varicodec.imageio import load_rgb, to_tensor
from varicodec.train.data import list_images


@torch.no_grad()
def ceiling_psnr(model, x: torch.Tensor, lmbda: float | None) -> float:
    """PSNR (8-bit, rounded) of the unquantised reconstruction of ``x`` (1×3×H×W)."""
    h, w = x.shape[-2:]
    f = model.downsampling_factor
    xp = F.pad(x, (0, (-w) % f, 0, (-h) % f), mode="replicate")
    lm = model._lmbda_batch(lmbda, 1, x.device) if model.variable_rate else None
    with model._at(lm):
        y = model.net.g_a(xp)         # modulated at λ (forward hook)
        x_hat = model.net.g_s(y)      # demodulated at λ (pre-hook)
    x_hat = x_hat[..., :h, :w].clamp(0, 1).mul(255).round()
    mse = float((x_hat - x.mul(255).round()).pow(2).mean())
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="weights (.safetensors)")
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[2]
                                            / "shared/data/kodak"))
    ap.add_argument("--lmbda", type=float, help="λ of variable-rate models (default: λ max)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not Path(a.images).is_dir():
        sys.exit(f"ceiling: no image folder at {a.images}")
    files = list_images(a.images)
    images = [(p.name, to_tensor(load_rgb(p))) for p in files]
    results = []
    for path in a.models:
        model = load_model(path).eval()
        lm = (a.lmbda or model.lmbda_range.max) if model.variable_rate else None
        per_image = {name: ceiling_psnr(model, x, lm) for name, x in images}
        r = {"model": str(path), "lmbda": lm, "images": len(per_image),
             "mean_psnr_db": float(np.mean(list(per_image.values()))),
             "per_image_psnr_db": per_image}
        results.append(r)
        print(f"{path}: ceiling {r['mean_psnr_db']:.2f} dB (mean of {len(per_image)}), "
              f"kodim23 {per_image.get('kodim23.png', float('nan')):.2f} dB", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": "python benchmarks/ceiling.py " + " ".join(sys.argv[1:]),
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
