"""Peak memory of ``varicodec encode`` / ``decode`` by image size, and seams of tiling.

**Peak RSS.** Each case is a fresh ``python -m varicodec encode|decode``
process; its peak resident set (``ru_maxrss`` from ``wait4``) and wall time are
reported, with MiB per megapixel. Test pictures are built once in a scratch
folder (never in the repository): Kodak images mirrored side by side up to
the size (a synthetic picture when Kodak is absent), saved as PNG. With
``--refine STEPS`` each picture is also encoded with ``encode --refine STEPS``
(latent refinement, ``varicodec.models.refine``): the extra memory of the steps.

**Seams.** Tiles are coded independently (``varicodec.codec.tiles``); what
could show is a seam at tile borders. On Kodak images coded with small tiles
(``--seam-tile``, default 224: a 768×512 image has 5 inner borders), the
PSNR of the pixels within ``--band`` pixels of an inner tile border is compared
with the PSNR of all other pixels, for several margins and for the same image
coded in one piece (where the same pixel bands are not special: that gap is
the baseline).

    nice python benchmarks/memory.py                                  # all of it
    python benchmarks/memory.py --sizes 1 12 --no-seams --json mem.json
    python benchmarks/memory.py --no-memory --seam-images 24 --margins 0 16 32
    python benchmarks/memory.py --sizes 1 12 --refine 2 --no-seams --json mem-refine.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from varicodec.codec.tiles import DEFAULT_TILE

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
SIZES_MP = (1, 12, 64)
#: width × height per size in megapixels (64 MP = 8192², as in the issue)
SHAPES = {1: (1024, 1024), 4: (2048, 2048), 12: (4000, 3000), 64: (8192, 8192)}


def picture(width: int, height: int) -> np.ndarray:
    """Kodak images mirrored side by side (synthetic if Kodak is absent), ``H×W×3``."""
    if KODAK.is_dir():
        tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(KODAK.glob("*.png"))]
        tiles = [t for t in tiles if t.shape[:2] == (512, 768)]
    else:
        from varicodec.demo import synthetic_image

        print(f"memory.py: no Kodak at {KODAK}: measuring synthetic pictures instead",
              file=sys.stderr)
        tiles = [synthetic_image(768, 512, seed=i) for i in range(4)]
    out = np.empty((height, width, 3), np.uint8)
    k = 0
    for y in range(0, height, 512):
        for x in range(0, width, 768):
            t = tiles[k % len(tiles)]
            k += 1
            t = t[:, ::-1] if (x // 768) % 2 else t
            h, w = min(512, height - y), min(768, width - x)
            out[y:y + h, x:x + w] = t[:h, :w]
    return out


def _run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of a child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode().strip() if p.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    p.returncode = code
    if code:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}: {err.splitlines()[-1] if err else ''}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def memory(sizes: list[int], untiled: list[int], threads: int | None,
           refine: int = 0) -> list[dict]:
    rows = []
    env_py = [sys.executable, "-m", "varicodec"]
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    _, base = _run([sys.executable, "-c", "import varicodec.codec.api"])
    rows.append({"case": "import varicodec.codec.api (baseline)", "rss_mib": base})
    with tempfile.TemporaryDirectory() as tmp:
        for mp in sizes:
            w, h = SHAPES.get(mp, (int(math.sqrt(mp * 2**20)),) * 2)
            src = Path(tmp) / f"{mp}mp.png"
            Image.fromarray(picture(w, h)).save(src, compress_level=1)
            modes = ["auto"] + (["0", str(DEFAULT_TILE)] if mp in untiled else [])
            for tile in dict.fromkeys(modes):  # at ≤ 4 MP "auto" is one piece: compare both
                vcd = Path(tmp) / f"{mp}mp-{tile}.vcd"
                enc_s, enc_rss = _run(env_py + ["encode", str(src), "-o", str(vcd), "-f",
                                                "--tile", tile])
                dec_s, dec_rss = _run(env_py + ["decode", str(vcd), "-o",
                                                str(Path(tmp) / "out.png"), "-f"])
                mpx = w * h / 1e6
                row = {"size": f"{w}x{h}", "megapixels": round(mpx, 2), "tile": tile,
                       "bytes": vcd.stat().st_size, "bpp": vcd.stat().st_size * 8 / (w * h),
                       "encode_s": enc_s, "encode_rss_mib": enc_rss,
                       "decode_s": dec_s, "decode_rss_mib": dec_rss,
                       "encode_mib_per_mp": (enc_rss - base) / mpx,
                       "decode_mib_per_mp": (dec_rss - base) / mpx}
                if refine:
                    ref_s, ref_rss = _run(env_py + ["encode", str(src), "-o", str(vcd), "-f",
                                                    "--tile", tile, "--refine", str(refine)])
                    row.update({"refine_steps": refine, "refine_encode_s": ref_s,
                                "refine_encode_rss_mib": ref_rss,
                                "refine_encode_mib_per_mp": (ref_rss - base) / mpx,
                                "refine_bpp": vcd.stat().st_size * 8 / (w * h)})
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _border_mask(width: int, height: int, tile: int, band: int) -> np.ndarray:
    """Pixels within ``band`` of an inner tile border (both sides of it)."""
    mask = np.zeros((height, width), bool)
    for y in range(tile, height, tile):
        mask[max(0, y - band):y + band] = True
    for x in range(tile, width, tile):
        mask[:, max(0, x - band):x + band] = True
    return mask


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def seams(n_images: int, tile: int, band: int, margins: list[int], quality: float) -> dict:
    from varicodec.codec import decode, encode_image, resolve_model

    model = resolve_model(None)
    paths = sorted(KODAK.glob("*.png"))[:n_images]
    if not paths:
        raise SystemExit(f"memory.py: no Kodak images at {KODAK} for the seam measurement")
    configs = [("one piece", 0, None)] + [(f"margin {m}", tile, m) for m in margins]
    acc = {name: {"border_sq": 0.0, "border_n": 0, "interior_sq": 0.0, "interior_n": 0,
                  "bytes": 0} for name, _, _ in configs}
    for p in paths:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        h, w = rgb.shape[:2]
        mask = _border_mask(w, h, tile, band)
        for name, t, margin in configs:
            r = encode_image(rgb, model, quality=quality, tile=t, tile_margin=margin or 0,
                             compute_psnr=False)
            out = np.asarray(decode(r.data, model).convert("RGB")).astype(np.float64)
            sq = ((out - rgb) ** 2).sum(axis=2)
            a = acc[name]
            a["border_sq"] += float(sq[mask].sum())
            a["border_n"] += int(mask.sum()) * 3
            a["interior_sq"] += float(sq[~mask].sum())
            a["interior_n"] += int((~mask).sum()) * 3
            a["bytes"] += len(r.data)
    out = {"images": len(paths), "tile": tile, "band": band, "quality": quality, "rows": []}
    ref_bytes = acc["one piece"]["bytes"]
    for name, a in acc.items():
        b = 10 * math.log10(255**2 / (a["border_sq"] / a["border_n"]))
        i = 10 * math.log10(255**2 / (a["interior_sq"] / a["interior_n"]))
        out["rows"].append({"config": name, "border_psnr_db": b, "interior_psnr_db": i,
                            "gap_db": b - i, "bytes": a["bytes"],
                            "bytes_vs_one_piece": a["bytes"] / ref_bytes - 1})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_MP),
                    help="image sizes in megapixels (1, 4, 12, 64 have set shapes)")
    ap.add_argument("--untiled", type=int, nargs="*", default=[1, 4],
                    help="sizes also coded in one piece (--tile 0) and in default tiles "
                    "(--tile 992); one piece takes ~0.5 GiB per megapixel")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the children")
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="also encode each picture with --refine STEPS (its peak RSS and time)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-seams", action="store_true")
    ap.add_argument("--seam-images", type=int, default=8)
    ap.add_argument("--seam-tile", type=int, default=224)
    ap.add_argument("--band", type=int, default=4, help="pixels each side of a border")
    ap.add_argument("--margins", type=int, nargs="+", default=[0, 8, 16])
    ap.add_argument("--qualities", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    result: dict = {"load_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    if not args.no_memory:
        result["memory"] = memory(args.sizes, args.untiled, args.threads, args.refine)
        ref_head = (f" --refine {args.refine}: encode peak RSS MiB (MiB/MP) | encode s | bpp |"
                    if args.refine else "")
        print("| image | tile | encode peak RSS MiB (MiB/MP) | decode peak RSS MiB (MiB/MP) "
              f"| encode s | decode s | bpp |{ref_head}\n|---|---|---|---|---|---|---|"
              + ("---|---|---|" if args.refine else ""))
        for r in result["memory"]:
            if "size" not in r:
                print(f"| {r['case']} | | {r['rss_mib']:.0f} | | | | |")
                continue
            ref = (f" {r['refine_encode_rss_mib']:.0f} ({r['refine_encode_mib_per_mp']:.0f}) | "
                   f"{r['refine_encode_s']:.1f} | {r['refine_bpp']:.3f} |"
                   if "refine_steps" in r else "")
            print(f"| {r['size']} ({r['megapixels']} MP) | {r['tile']} | "
                  f"{r['encode_rss_mib']:.0f} ({r['encode_mib_per_mp']:.0f}) | "
                  f"{r['decode_rss_mib']:.0f} ({r['decode_mib_per_mp']:.0f}) | "
                  f"{r['encode_s']:.1f} | {r['decode_s']:.1f} | {r['bpp']:.3f} |{ref}")
    if not args.no_seams:
        result["seams"] = []
        print(f"\nseams: {args.seam_images} Kodak images, {args.seam_tile}-px tiles, "
              f"±{args.band} px bands\n\n| quality | coding | border PSNR dB | interior PSNR dB "
              "| gap dB | bytes vs one piece |\n|---|---|---|---|---|---|")
        for q in args.qualities:
            s = seams(args.seam_images, args.seam_tile, args.band, args.margins, q)
            result["seams"].append(s)
            for r in s["rows"]:
                print(f"| {q:g} | {r['config']} | {r['border_psnr_db']:.2f} | "
                      f"{r['interior_psnr_db']:.2f} | {r['gap_db']:+.2f} | "
                      f"{100 * r['bytes_vs_one_piece']:+.1f} % |", flush=True)
    result["load_after"] = os.getloadavg()[0]
    print(f"\nload average {result['load_before']:.2f} before, {result['load_after']:.2f} after; "
          f"{result['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
