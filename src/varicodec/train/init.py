"""Where a training run starts (``--init``): one loader for every kind of starting weights.

``spec`` is one of

* an exported ``.safetensors`` model (its card names architecture, variant, N, M);
* a run folder or its ``checkpoint.safetensors``;
* ``compressai:ARCH[:QUALITY]``: CompressAI's pretrained MSE model from its zoo, fetched by
  the zoo's own ``pretrained=True`` path through torch.hub (cache in
  ``$TORCH_HOME/hub/checkpoints``; a cached file needs no network). ``ARCH`` is
  ``bmshj2018-hyperprior`` (→ hyperprior), ``mbt2018-mean`` (→ mean) or ``mbt2018``
  (→ joint). ``QUALITY`` 1–8; without it a variable-rate model starts from quality 8 and a
  fixed-rate one from the quality whose λ it trains at.

Every path goes through one check (:func:`load_checked`): keys the model lacks, or
tensors of another shape, are an error naming them; of the model's own keys only the
plug-ins' (gates, modulators) may be absent from the weights, and they keep their fresh
initialisation — gates open (α = 0 by default), so a gated model starts out coding like the
weights it was given. A variable-rate model from CompressAI's zoo gets its modulators
initialised at that quality's λ (``m(λ_q) = 1``), so it is exact there; variable-rate
weights given to a fixed-rate model are folded at its λ (:mod:`varicodec.models.fold`).

CompressAI's files are pickles (``.pth.tar``): they are read with
``torch.load(weights_only=True)``, which refuses to run code.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import VaricodecModel, parse_name, read_card
from ..quality import QUALITY_LMBDAS
from ..util import file_sha256
from .checkpoint import load_checkpoint

__all__ = ["ZOO_ARCHITECTURES", "InitResult", "load_init", "load_init_weights", "load_checked",
           "parse_zoo_spec", "zoo_file"]

CHECKPOINT = "checkpoint.safetensors"

#: CompressAI zoo name → our architecture
ZOO_ARCHITECTURES: dict[str, str] = {
    "bmshj2018-hyperprior": "hyperprior",
    "mbt2018-mean": "mean",
    "mbt2018": "joint",
}

#: entropy-coder tables CompressAI resizes to the stored ones (their shapes may differ)
_CODER_TABLES = ("._quantized_cdf", "._offset", "._cdf_length", ".scale_table")


@dataclass
class InitResult:
    """What :func:`load_init` did.

    ``kept_fresh``: the model's tensors the weights did not provide (gates, modulators);
    ``pretrained``: where the weights ultimately come from when that is CompressAI's zoo
    (source, CompressAI version, file name, sha256), carried through staged runs;
    ``lmbda_ref``: λ at which the modulators were set to unit gain, if they were;
    ``notes``: lines worth telling the user.
    """

    spec: str
    kept_fresh: list[str] = field(default_factory=list)
    pretrained: dict | None = None
    lmbda_ref: float | None = None
    notes: list[str] = field(default_factory=list)
    parts: list[str] | None = None

    def describe(self) -> str:
        """One line: where the model starts and what kept its fresh initialisation."""
        gates = sorted({k.split(".gate.")[0] for k in self.kept_fresh if ".gate." in k})
        mods = sorted({k.split(".")[0] for k in self.kept_fresh
                       if k.startswith(("modulator.", "demodulator."))})
        parts = []
        if gates:
            parts.append(f"{len(gates)} gates")
        if mods:
            at = f" (unit gain at λ={self.lmbda_ref:g})" if self.lmbda_ref else ""
            parts.append(" and ".join(mods) + at)
        fresh = ", ".join(parts) if parts else "nothing"
        if self.parts:
            fresh = f"everything but {', '.join(self.parts)}"
        return f"initialised from {self.spec}; kept fresh: {fresh}"


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" … ({len(items)} in all)" if len(items) > n else "")


def _is_plugin(key: str) -> bool:
    return ".gate." in key or key.startswith(("modulator.", "demodulator."))


def load_checked(model: VaricodecModel, state: dict, what: str,
                 source_name: str | None = None, partial: bool = False) -> list[str]:
    """Load ``state`` into ``model``; return the plug-in keys it did not provide.

    Raises ``ValueError`` naming the keys when ``state`` has keys the model lacks,
    tensors of another shape, or lacks any key that is not a gate's or a modulator's
    (``partial``: any key may be absent; it keeps its fresh initialisation).
    """
    own = model.state_dict()
    fits = f"{what}: weights{f' of {source_name}' if source_name else ''} do not fit " \
           f"{model.name} (N={model.config['N']}, M={model.config['M']})"
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise ValueError(f"{fits}: unexpected keys {_few(unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(state)
              if not k.endswith(_CODER_TABLES) and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"{fits}: shapes differ (theirs vs the model's): {_few(shapes)}")
    from ..models.io import derived_buffers

    derived = derived_buffers(model)  # fixed by construction: weights files leave them out
    missing = sorted(k for k in own if k not in state and k not in derived)
    lacking = [k for k in missing if not _is_plugin(k)]
    if lacking and not partial:
        raise ValueError(f"{fits}: missing keys {_few(lacking)}")
    model.load_state_dict({k: v.to(own[k].dtype) if own[k].is_floating_point() else v
                           for k, v in state.items()}, strict=False)
    return missing


def _only_parts(state: dict, parts: list[str], spec: str) -> dict:
    """The entries of ``state`` under the top-level modules ``parts`` (``g_a`` means
    ``net.g_a.*``, ``modulator`` means ``modulator.*``)."""
    prefixes = tuple(p for part in parts for p in (f"net.{part}.", f"{part}."))
    kept = {k: v for k, v in state.items() if k.startswith(prefixes)}
    found = {part for part in parts if any(k.startswith((f"net.{part}.", f"{part}."))
                                           for k in kept)}
    if set(parts) - found:
        raise ValueError(f"--init {spec}: no weights for {sorted(set(parts) - found)} in it "
                         "(init_parts names top-level modules such as g_a, g_s, h_a, h_s, "
                         "modulator, demodulator)")
    return kept


def load_init(model: VaricodecModel, spec: str | Path, progress: bool = True,
              parts: list[str] | None = None) -> InitResult:
    """Load the starting weights ``spec`` into ``model`` (see the module docstring).

    ``parts``: take only these top-level modules (e.g. the transforms ``g_a``, ``g_s`` and
    the modulators of a hyperprior for a mean-scale or joint model, whose transforms have
    the same layers); every other tensor keeps its fresh initialisation."""
    text = str(spec)
    if text.startswith("compressai:"):
        if parts:
            raise ValueError("init_parts takes a weights file or run, not CompressAI's zoo")
        return _load_zoo(model, text, progress)
    path = Path(text)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--init: no such weights or run: {path}")
    try:
        config, card = read_card(path)
        from safetensors.torch import load_file

        state = load_file(str(path))
        pretrained = card.get("pretrained")
    except ValueError:  # not an exported model: a training checkpoint
        state, _, meta = load_checkpoint(path)
        recipe = meta.get("recipe", {})
        arch, variant = parse_name(recipe.get("model", "hyperprior-base"))
        config = dict(recipe, arch=arch, variant=variant)
        pretrained = meta.get("pretrained")
    source_name = f"{config.get('arch')}-{config.get('variant')}"
    if not model.variable_rate and any(k.startswith("modulator.") for k in state):
        state = _folded_state(state, config, model.lmbda)
        source_name += f" folded at λ={model.lmbda:g}"
    result = InitResult(str(spec), pretrained=pretrained)
    if parts:
        state = _only_parts(state, list(parts), text)
        result.parts = list(parts)
    result.kept_fresh = load_checked(model, state, f"--init {text}", source_name,
                                     partial=bool(parts))
    return result


def load_init_weights(model: VaricodecModel, spec: str | Path) -> list[str]:
    """:func:`load_init`, returning only the names of the tensors kept fresh."""
    return load_init(model, spec).kept_fresh


def _folded_state(state: dict, config: dict, lmbda: float) -> dict:
    """A variable-rate model's weights with its modulator folded in at ``lmbda``."""
    from ..models.fold import fold_bitrate_modulator
    from ..models.io import model_from_state

    keys = ("arch", "variant", "N", "M", "lmbda_range", "lmbda_ref", "gate", "bm_hidden")
    source = model_from_state({k: config[k] for k in keys if config.get(k) is not None}, state)
    return fold_bitrate_modulator(source, lmbda).state_dict()


# ------------------------------------------------------------------ CompressAI's zoo
def parse_zoo_spec(spec: str, model: VaricodecModel) -> tuple[str, int]:
    """``compressai:ARCH[:QUALITY]`` → (zoo name, quality), checked against ``model``:
    architecture, and N/M against CompressAI's configuration of that quality."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in ZOO_ARCHITECTURES:
        names = ", ".join(f"{k} ({v})" for k, v in ZOO_ARCHITECTURES.items())
        raise ValueError(f"--init {spec}: expected compressai:ARCH[:QUALITY] with ARCH one of "
                         f"{names}")
    zoo = parts[1]
    if len(parts) == 3:
        if not parts[2].isdigit() or not 1 <= int(parts[2]) <= 8:
            raise ValueError(f"--init {spec}: the quality must be an integer 1–8, "
                             f"got {parts[2]!r}")
        quality = int(parts[2])
    elif model.variable_rate:
        quality = 8
    else:
        near = [q for q, lm in enumerate(QUALITY_LMBDAS, 1)
                if math.isclose(lm, model.lmbda, rel_tol=1e-3)]
        if not near:
            raise ValueError(f"--init {spec}: the model trains at λ={model.lmbda:g}, which is "
                             "no CompressAI quality's λ: name the quality "
                             f"(compressai:{zoo}:Q, Q in 1–8)")
        quality = near[0]
    arch = ZOO_ARCHITECTURES[zoo]
    if model.arch != arch:
        raise ValueError(f"--init {spec}: CompressAI's {zoo} is the {arch} architecture; "
                         f"the recipe's model is {model.name}")
    from compressai.zoo import image

    n, m = image.cfgs[zoo][quality]
    if (model.config["N"], model.config["M"]) != (n, m):
        raise ValueError(f"--init {spec}: CompressAI's {zoo} quality {quality} has N={n}, "
                         f"M={m}; the recipe has N={model.config['N']}, M={model.config['M']}: "
                         f"set N: {n} and M: {m}")
    if model.variable_rate:
        model.lmbda_range.check(QUALITY_LMBDAS[quality - 1])
    return zoo, quality


def zoo_file(zoo: str, quality: int) -> tuple[str, Path]:
    """``(url, cache path)`` of CompressAI's MSE weights: where torch.hub keeps them."""
    from compressai.zoo import image

    url = image.model_urls[zoo]["mse"][quality]
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


@contextlib.contextmanager
def _weights_only_hub(zoo: str, quality: int, progress: bool) -> Iterator[None]:
    """Inside the block the zoo's ``load_state_dict_from_url`` reads with
    ``weights_only=True`` (and checks a download's hash prefix); a file that is not
    cached and cannot be downloaded, or cannot be read, is one clear error."""
    from compressai.zoo import image

    url, path = zoo_file(zoo, quality)
    original = image.load_state_dict_from_url

    def fetch(url_: str, progress: bool = progress, **_: object) -> dict:
        cached = path.is_file()
        try:
            return torch.hub.load_state_dict_from_url(url_, progress=progress, check_hash=True,
                                                      weights_only=True, map_location="cpu")
        except Exception as e:  # one line whatever urllib, torch.hub or unpickling raised
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not cached and not path.is_file():
                raise FileNotFoundError(
                    f"CompressAI's {zoo} quality {quality} weights are not cached and could not "
                    f"be downloaded ({reason}): download {url} by hand and put it at {path} "
                    "(the cache follows TORCH_HOME)") from None
            raise ValueError(f"cannot read {path} with weights_only=True ({reason}); "
                             "delete it to download it again") from None

    image.load_state_dict_from_url = fetch
    try:
        yield
    finally:
        image.load_state_dict_from_url = original


def _load_zoo(model: VaricodecModel, spec: str, progress: bool) -> InitResult:
    zoo, quality = parse_zoo_spec(spec, model)
    import compressai
    from compressai import zoo as compressai_zoo

    with _weights_only_hub(zoo, quality, progress):
        try:
            net = compressai_zoo.image_models[zoo](quality, metric="mse", pretrained=True,
                                                   progress=progress)
        except (RuntimeError, KeyError) as e:  # from_state_dict: keys or shapes off
            first = str(e).strip().splitlines()[0] if str(e) else type(e).__name__
            _, path = zoo_file(zoo, quality)
            raise ValueError(f"--init {spec}: {path} does not fit CompressAI's {zoo} "
                             f"({first})") from None
    url, path = zoo_file(zoo, quality)
    source = f"compressai:{zoo}:{quality}"
    lmbda_q = QUALITY_LMBDAS[quality - 1]
    digest = file_sha256(path)
    prefix = re.search(r"-([0-9a-f]{8,})\.pth", path.name)
    pretrained = {
        "source": source, "compressai_version": compressai.__version__, "file": path.name,
        "url": url, "sha256": digest, "quality": quality, "lmbda": lmbda_q,
        "sha256_matches_name": bool(prefix and digest.startswith(prefix.group(1))),
    }
    result = InitResult(source, pretrained=pretrained)
    if not pretrained["sha256_matches_name"]:
        result.notes.append(f"note: {path.name}'s sha256 ({digest[:8]}…) does not start with the "
                            "hash its name carries: not the file CompressAI published")
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    result.kept_fresh = load_checked(model, state, f"--init {spec}", f"CompressAI {zoo} q{quality}")
    if model.variable_rate:
        _modulators_at(model, lmbda_q)
        result.lmbda_ref = lmbda_q
    elif not math.isclose(model.lmbda, lmbda_q, rel_tol=1e-3):
        result.notes.append(f"note: the recipe trains at λ={model.lmbda:g}; CompressAI trained "
                            f"{source} at λ={lmbda_q:g}")
    return result


@torch.no_grad()
def _modulators_at(model: VaricodecModel, lmbda_ref: float) -> None:
    """Re-initialise both modulators to unit gain at ``lmbda_ref`` (``(λ/λ_ref)^{±1/2}``)."""
    from ..layers import BitrateModulator

    for name, exponent in (("modulator", 0.5), ("demodulator", -0.5)):
        mod = getattr(model, name)
        fresh = BitrateModulator(mod.fc2.out_features, model.lmbda_range, lmbda_ref, exponent,
                                 mod.fc1.out_features)
        mod.load_state_dict(fresh.state_dict())
    model.config["lmbda_ref"] = float(lmbda_ref)
