"""Write the golden ``.vcd`` files of tests/golden/ (decoded in CI by tests/test_golden.py).

    python scripts/make_golden.py            # (re)write tests/golden/
    python scripts/make_golden.py --check    # write to a scratch folder, compare, write nothing

One tiny ``joint-ecgbm`` model (N = M = 8, woken so its streams carry tens of
distinct symbols; fp16 weights as ``save_model`` writes them) codes one generated
image per entry of :data:`ENTRIES`: the model has gates (side stream), a λ code and
the autoregressive latent whose coding order changed in version 3 (and whose guard
margin widened at small scales in version 5), so one model
exercises every field a format version has changed so far. For each entry the
script writes ``<entry>.vcd`` and the decoder's output ``<entry>.png``, and records
in ``golden.json`` the file's sha256 and the sha256 of the entropy-decoded symbols
(int32, decoding order), which a correct decoder reproduces on any machine (the
pixels may move by a grey level between machines, docs/design.md).

Versions older than the writer's are produced the way their writer did: the same
container fields with the y stream in that version's coding order (versions 1-2:
CompressAI's sequential order) and, for version 1, no guard stream. A new format
version is one more entry here, then a run of this script; ``tests/test_golden.py``
fails until every readable version has one.

The golden files are regenerated only on purpose (a deliberate format change
with a new version number): old files must keep decoding unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tests"))

from icc_profiles import matrix_profile  # noqa: E402 - the tests' ICC profile builder
from tiny_models import texture, wake  # noqa: E402 - the tests' own tiny-model recipe

from varicodec.codec import decode_image, encode  # noqa: E402
from varicodec.codec.format import FORMAT_VERSION, Container  # noqa: E402
from varicodec.imageio import open_image, pad_to_multiple, to_tensor  # noqa: E402
from varicodec.models import (  # noqa: E402
    create_model,
    load_model,
    save_model,
    weights_fingerprint,
)

MODEL = "joint-ecgbm"
WEIGHTS = f"{MODEL}-tiny.safetensors"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One golden file: format ``version``, image ``mode`` (RGB, RGBA, L), quality,
    how the guard stream names its latents (``VaricodecModel.compress``'s
    ``guard_mode``; ``"auto"``: as the writer of that version did), and whether the
    image carries a (non-sRGB) ICC profile."""

    name: str
    version: int
    mode: str = "RGB"
    quality: float = 4.0
    guard_mode: str = "auto"
    icc: bool = False


#: one entry per readable format version (and the image kinds worth pinning)
ENTRIES = (
    Entry("v1-rgb", 1),
    Entry("v2-rgba", 2, "RGBA", 6.0),
    Entry("v3-rgb", 3),
    Entry("v3-gray", 3, "L", 2.0),
    Entry("v4-rgb", 4),
    # a latent of this image lies within 1e-5 of a scale boundary at quality 2.9:
    # pins the version 4 hash-mode guard layout (on so small an image "auto" would
    # name it by position, which is shorter)
    Entry("v4-hash", 4, quality=2.9, guard_mode="hash"),
    # version 5: the joint model's guard with an absolute margin (Container.absolute_margin)
    Entry("v5-rgb", 5),
    # version 6: version 5 plus the ICC profile stream (written only with a profile)
    Entry("v6-icc", 6, icc=True),
)


def tiny_golden_model():
    torch.manual_seed(16)
    model = create_model(MODEL, N=8, M=8, bm_hidden=8).eval()
    for _, g in model.gates():
        g.alpha.data.fill_(0.8)  # some channels gated off
    wake(model, texture())
    model.update(force=True)
    return model


def golden_image(mode: str, icc: bool = False) -> Image.Image:
    """A 90×100 picture (not a multiple of 64: the codec pads and crops); ``icc``: with a
    wide-gamut RGB profile (tests/icc_profiles.py)."""
    rgb = (texture(128, 128, seed=3)[0].permute(1, 2, 0).numpy() * 255).round()
    img = Image.fromarray(rgb.astype(np.uint8)[:100, :90])
    if mode == "RGBA":
        alpha = np.where(np.add.outer(np.arange(100), np.arange(90)) % 37 < 20, 255, 40)
        img.putalpha(Image.fromarray(alpha.astype(np.uint8)))
    img = img.convert(mode)
    if icc:
        img.info["icc_profile"] = matrix_profile("varicodec golden wide-gamut RGB")
    return img


def recode(data: bytes, model, image: Image.Image, version: int,
           guard_mode: str = "auto") -> bytes:
    """``data`` (the current writer's) as format ``version`` would have stored it
    (with ``guard_mode`` other than ``"auto"``: with that guard mode)."""
    c = Container.unpack(data)
    if version == c.version and guard_mode == "auto":
        return data
    old = dataclasses.replace(c, version=version, guard=None if version == 1 else b"")
    x = pad_to_multiple(to_tensor(open_image(image).rgb), model.downsampling_factor)
    lmbda = model.lmbda_range.decode(c.lmbda_code)
    # versions 2-3 name guarded latents by position; hash mode is version 4's
    if version < 4:
        guard_mode = "positions"
    out = model.compress(x, lmbda, order=old.coding_order, guard_mode=guard_mode,
                         absolute_margin=old.absolute_margin)
    s = out["strings"]
    if version == 1 and len(s[-1][0]) > 4:
        # version 1 has no explicit indexes: a latent this close to a scale-table
        # boundary could decode differently on another machine; change the image or seed
        raise SystemExit("the version 1 file would have latents near a scale boundary")
    return dataclasses.replace(
        old, y=s[0][0], z=s[1][0], side=s[2][0] if model.gated else b"",
        guard=None if version == 1 else s[-1][0],
    ).pack()


class DecodedSymbols:
    """Records the integer symbols every entropy model hands to ``dequantize``
    (z, then y; decoding order) while the block runs."""

    def __enter__(self) -> DecodedSymbols:
        from compressai.entropy_models.entropy_models import EntropyModel

        self.cls, self.original = EntropyModel, EntropyModel.__dict__["dequantize"]
        self.seen: list[torch.Tensor] = []
        original = self.original.__func__

        def dequantize(inputs, means=None, dtype=torch.float):
            self.seen.append(inputs.detach().reshape(-1).to("cpu", torch.int32))
            return original(inputs, means, dtype)

        self.cls.dequantize = staticmethod(dequantize)
        return self

    def __exit__(self, *exc) -> None:
        self.cls.dequantize = self.original

    def sha256(self) -> str:
        symbols = torch.cat(self.seen).numpy().astype("<i4")
        return hashlib.sha256(symbols.tobytes()).hexdigest()

    def distinct(self) -> int:
        return int(torch.cat(self.seen).unique().numel())


def decode_with_symbols(data: bytes, model) -> tuple[Image.Image, str, int]:
    with DecodedSymbols() as rec:
        image, _ = decode_image(data, model)
    return image, rec.sha256(), rec.distinct()


def write(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    weights, fresh = folder / WEIGHTS, tiny_golden_model()
    card = {"purpose": "golden .vcd files (scripts/make_golden.py)"}
    if weights.exists():
        # saving again can change the file's bytes but not its tensors: keep it then
        trial = save_model(fresh, folder / f"new-{WEIGHTS}", card=card)
        same = weights_fingerprint(load_model(trial)) == weights_fingerprint(load_model(weights))
        trial.unlink()
        if not same:
            save_model(fresh, weights, card=card)
    else:
        save_model(fresh, weights, card=card)
    model = load_model(weights)  # code with exactly what the test will load
    entries = {}
    for e in ENTRIES:
        if e.version > FORMAT_VERSION:
            raise SystemExit(f"{e.name}: this writer only knows versions up to {FORMAT_VERSION}")
        image = golden_image(e.mode, e.icc)
        data = recode(encode(image, model, quality=e.quality), model, image, e.version,
                      e.guard_mode)
        assert data[3] == e.version
        (folder / f"{e.name}.vcd").write_bytes(data)
        decoded, symbols, distinct = decode_with_symbols(data, model)
        decoded.save(folder / f"{e.name}.png")
        entries[e.name] = {
            "version": e.version, "mode": e.mode, "quality": e.quality, "icc": e.icc,
            "size": list(decoded.size), "bytes": len(data),
            "vcd_sha256": hashlib.sha256(data).hexdigest(),
            "symbols_sha256": symbols, "distinct_symbols": distinct,
        }
    manifest = {"command": "python scripts/make_golden.py", "model": MODEL,
                "weights": WEIGHTS, "entries": entries}
    (folder / "golden.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate in a scratch folder and compare with tests/golden/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.check:
        manifest = write(GOLDEN)
        for name, e in manifest["entries"].items():
            print(f"{name}: version {e['version']}, {e['bytes']} bytes, "
                  f"{e['distinct_symbols']} distinct symbols")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        new = write(Path(tmp))
    old = json.loads((GOLDEN / "golden.json").read_text())
    same = new["entries"] == old["entries"]
    print("tests/golden/ is what this script writes" if same else
          "tests/golden/ differs from what this script writes now")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
