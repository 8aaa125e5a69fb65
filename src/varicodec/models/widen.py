"""Grow a trained model to more channels without changing what it computes.

A line trained at N=128/M=192 holds tens of thousands of GPU steps; the paper's universal
size is N=192/M=320. :func:`widen_model` builds the wider model so that it starts where the
narrow one stands instead of from scratch (the idea of Net2WiderNet, Chen et al. 2016):

* every old channel keeps its index and its weights, and no new channel feeds an old one
  (the weights from new inputs to old outputs are zero, and so are the GDN couplings), so
  the old channels compute exactly what they computed before;
* each new channel gets fresh incoming weights (the wider model's own initialisation),
  so it carries a signal and its outgoing weights receive gradient from the first step;
* where a new channel is *coded* (the latent ``y`` and the hyper-latent ``z``) its fresh
  weights are scaled by ``eps``, so it is almost zero and quantises to (nearly) free
  symbols: ``h_s`` gives the new ``y`` channels a constant scale inside the scale table's
  first interval (zero weights, which still receive gradient), the new ``z`` channels get
  an old channel's density compressed towards zero;
* the bit-rate modulator's new gains start at the geometric mean of the old ones.

So the wide model's reconstruction equals the narrow one's, and its rate exceeds it only
by the (nearly) empty new channels; training then puts the new channels to use.
Implemented for the ScaleHyperprior (``hyperprior-base`` / ``-bm``). Gated models are
refused: the energy gate's threshold mixes neighbouring channels (a 1-D convolution
across them), so appending channels changes the old channels' gates.
"""

from __future__ import annotations

import torch
from torch import nn

from .codec_model import VaricodecModel
from .registry import create_model

__all__ = ["WIDEN_EPS", "widen_model", "widened_card"]

#: scale of the fresh weights of coded new channels (y, z) relative to a fresh init
WIDEN_EPS = 1e-2
#: output of ``h_s`` for a new latent channel: the middle of the first interval of
#: CompressAI's scale table (0.11, 0.1244), far from the boundaries the guard watches
_NEW_SCALE = (0.11 * 0.11 * (256 / 0.11) ** (1 / 63)) ** 0.5
#: a new hyper-latent channel's density starts so narrow that a zero has this probability
_ZERO_P = 0.999


def _convs_and_gdns(seq: nn.Module) -> list[nn.Module]:
    from compressai.layers import GDN

    return [m for m in seq.children() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, GDN))]


@torch.no_grad()
def _widen_conv(old: nn.Module, new: nn.Module, scale_new_out: float = 1.0,
                new_out_bias: float | None = None) -> None:
    """Old block copied, new inputs cut from old outputs, new outputs fresh × scale."""
    # out × in × k × k views: a transposed convolution stores in × out × k × k
    transposed = isinstance(new, nn.ConvTranspose2d)
    w = new.weight.transpose(0, 1) if transposed else new.weight
    w_old = old.weight.transpose(0, 1) if transposed else old.weight
    o, i = w_old.shape[:2]
    w[o:] *= scale_new_out
    w[:o, i:] = 0
    w[:o, :i] = w_old
    if new.bias is not None:
        if new_out_bias is not None:
            new.bias[o:] = new_out_bias
        else:
            new.bias[o:] *= scale_new_out
        new.bias[:o] = old.bias


@torch.no_grad()
def _widen_gdn(old: nn.Module, new: nn.Module) -> None:
    """Stored (reparametrised) β, γ: the old block copied; the fresh ones elsewhere are
    β = 1 and γ = 0.1·I, so a new channel normalises by itself only and no old channel
    sees a new one."""
    c = old.beta.shape[0]
    new.beta[:c] = old.beta
    new.gamma[:c, :c] = old.gamma


@torch.no_grad()
def _widen_sequence(old_seq: nn.Module, new_seq: nn.Module, last_scale: float = 1.0,
                    last_bias: float | None = None) -> None:
    olds, news = _convs_and_gdns(old_seq), _convs_and_gdns(new_seq)
    assert len(olds) == len(news)
    convs = [k for k, m in enumerate(news) if not hasattr(m, "beta")]
    for k, (a, b) in enumerate(zip(olds, news)):
        if hasattr(b, "beta"):
            _widen_gdn(a, b)
        elif k == convs[-1]:
            _widen_conv(a, b, last_scale, last_bias)
        else:
            _widen_conv(a, b)


@torch.no_grad()
def _widen_bottleneck(old: nn.Module, new: nn.Module) -> None:
    """Old channels' densities copied. Each new channel gets the old density that gives
    a zero input the highest likelihood, compressed towards zero until a zero costs at
    most ``-log2(_ZERO_P)`` bits: the factorised density's cumulative is ``c(H₀ x + …)``
    with ``H₀ = softplus(matrices.0)``, so ``H₀ → s·H₀`` makes it ``c(s x)``, the density
    ``s·p(s x)``. Its quantiles (median and tails) shrink with it."""
    c = old.quantiles.shape[0]
    old.eval()
    new.eval()
    _, lik = old(torch.zeros(1, c, 1, 1), training=False)
    best = int(lik.view(-1).argmax())
    own = dict(new.named_parameters())
    for name, p in old.named_parameters():
        q = own[name]
        q[:c] = p
        q[c:] = p[best:best + 1]
    h0, quantiles = own["matrices.0"][c:].clone(), own["quantiles"][c:].clone()
    s = 1.0
    while s < 1e6:
        own["matrices.0"][c:] = _softplus_inverse(s * nn.functional.softplus(h0))
        own["quantiles"][c:] = quantiles / s
        _, lik = new(torch.zeros(1, new.quantiles.shape[0], 1, 1), training=False)
        if float(lik.view(-1)[c:].min()) >= _ZERO_P:
            break
        s *= 2


def _softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


@torch.no_grad()
def _widen_modulator(old: nn.Module, new: nn.Module) -> None:
    """``ln m = W₂ h + b₂``: the old rows copied, new rows the mean of the old ones (the
    geometric mean gain); the hidden layer is shared and kept."""
    new.load_state_dict({k: v for k, v in old.state_dict().items()
                         if not k.startswith("fc2.")}, strict=False)
    c = old.fc2.weight.shape[0]
    new.fc2.weight[:c] = old.fc2.weight
    new.fc2.weight[c:] = old.fc2.weight.mean(0)
    new.fc2.bias[:c] = old.fc2.bias
    new.fc2.bias[c:] = old.fc2.bias.mean()


def _check(model: VaricodecModel, N: int, M: int) -> None:
    if model.arch != "hyperprior":
        raise ValueError(f"widening is implemented for hyperprior models, not {model.name}")
    if model.gated:
        raise ValueError(f"{model.name} is gated: its gates mix neighbouring channels, so "
                         "widening would change them; widen its bm parent instead")
    n, m = model.config["N"], model.config["M"]
    if N < n or M < m:
        raise ValueError(f"cannot narrow {model.name} from N={n}/M={m} to N={N}/M={M}")


@torch.no_grad()
def widen_model(model: VaricodecModel, N: int, M: int, *, seed: int = 0,
                eps: float = WIDEN_EPS) -> VaricodecModel:
    """``model`` grown to ``N``/``M`` channels, computing the same reconstruction (eval
    mode, entropy-coder tables updated). Raises ``ValueError`` for an architecture or
    variant it cannot widen, or for smaller sizes."""
    _check(model, N, M)
    torch.manual_seed(seed)
    cfg = dict(model.config)
    cfg.update(N=int(N), M=int(M))
    wide = create_model(model.name, **cfg)
    src, dst = model.net, wide.net
    _widen_sequence(src.g_a, dst.g_a, last_scale=eps)
    _widen_sequence(src.g_s, dst.g_s)
    _widen_sequence(src.h_a, dst.h_a, last_scale=eps)
    _widen_sequence(src.h_s, dst.h_s, last_scale=0.0, last_bias=_NEW_SCALE)
    _widen_bottleneck(src.entropy_bottleneck, dst.entropy_bottleneck)
    if model.variable_rate:
        _widen_modulator(model.modulator, wide.modulator)
        _widen_modulator(model.demodulator, wide.demodulator)
    wide.eval()
    wide.update(force=True)
    return wide


def widened_card(card: dict, model: VaricodecModel, N: int, M: int) -> dict:
    """The wide model's card: the narrow one's lineage plus a ``widen`` entry (0 steps)."""
    out = dict(card)
    out.update(N=int(N), M=int(M))
    out["lineage"] = list(card.get("lineage", [])) + [{
        "run": "widen", "model": model.name, "steps": 0,
        "from": f"N={model.config['N']} M={model.config['M']}", "to": f"N={N} M={M}"}]
    out["steps"] = 0
    return out
