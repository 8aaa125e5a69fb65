"""Control and calibrate the sparse execution of gated models.

Gated convolutions (:class:`~varicodec.layers.GatedConv2d`,
:class:`~varicodec.layers.GatedConvTranspose2d`) run their *sparse path* by
default whenever it applies — inference (``model.eval()``), batch size 1 — so
``compress`` / ``decompress`` of a single image use it without being asked.
It gathers the live input channels and the matching weight slice and runs the
convolution on that smaller problem, in channels-last layout; the result is the
masked dense result up to float rounding, and the bitstream is the same
(unless rounding noise moves a latent across a quantisation boundary, see
``docs/results/sparse.md``). Transposed convolutions run it in channels-last
layout, plain ones in NCHW (what measured fastest on CPU).

The switch::

    from varicodec.layers import sparse_execution

    with sparse_execution(model, False):      # masked dense inside the block
        c = model.compress(x)
    sparse_execution(model, False)            # or as a plain call: stays off
    sparse_execution(model, True)             # back to the default
    sparse_execution(model, True, channels_last=False)   # sparse, all NCHW

:func:`calibrate_alpha` sets every gate's ``α`` so that a given input is gated
at a target sparsity per layer (for benchmarks and experiments on untrained or
re-targeted models; trained models carry their own ``α``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .gate import EnergyChannelGate, GatedConv2d, GatedConvTranspose2d

__all__ = ["GatedConv", "calibrate_alpha", "gated_convolutions", "sparse_execution"]

GatedConv = GatedConv2d | GatedConvTranspose2d


def gated_convolutions(model: nn.Module) -> list[tuple[str, GatedConv]]:
    """``(name, layer)`` for every gated convolution of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (GatedConv2d, GatedConvTranspose2d))]


class sparse_execution:  # noqa: N801 - used like a function / context manager
    """Switch the sparse path of every gated convolution of ``model``.

    Args:
        model: any module containing gated convolutions.
        enabled: ``True`` (the default state) runs the sparse path where it
            applies; ``False`` runs the masked dense computation
            (input × gate, then the full convolution).
        channels_last: layout of the sparse path: ``True`` channels-last
            everywhere, ``False`` NCHW everywhere, ``None`` (default) each
            layer's class default (channels-last for transposed convolutions).

    The setting takes effect at the call. Used in a ``with`` statement, the
    previous settings come back at the end of the block.
    """

    def __init__(self, model: nn.Module, enabled: bool = True,
                 channels_last: bool | None = None) -> None:
        self.model = model
        self._saved = [(m, m.sparse, m.sparse_channels_last)
                       for _, m in gated_convolutions(model)]
        for m, _, _ in self._saved:
            m.sparse = bool(enabled)
            m.sparse_channels_last = (m.default_channels_last if channels_last is None
                                      else bool(channels_last))

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the settings found at construction."""
        for m, sparse, cl in self._saved:
            m.sparse, m.sparse_channels_last = sparse, cl


def _alpha_for(gate: EnergyChannelGate, x: Tensor, target: float) -> float:
    """The scalar ``α`` that gates ``round(target·C)`` channels of ``x`` off.

    A channel is off when ``e ≤ α·l`` (energy ``e``, local mean ``l``), i.e.
    when its ratio ``r = e/l`` is at most ``α``. Sorting the ratios, ``α`` is
    put at the geometric middle between the last channel to switch off and
    the first to stay on, as far as possible from both decisions. Channels
    with zero energy are off at any ``α ≥ 0``, so the target is a floor there.
    """
    with torch.no_grad():
        energy = EnergyChannelGate.energy(x[:1]).double()
        local = gate.threshold(energy.float())[1].double()
        ratio = (energy / local.clamp_min(1e-30)).flatten().sort().values
    c = ratio.numel()
    k = min(max(int(round(target * c)), 0), c)
    if k == 0:
        return 0.0
    if k == c:
        return float(ratio[-1]) * 2.0 + 1.0
    lo, hi = float(ratio[k - 1]), float(ratio[k])
    if lo <= 0.0:
        return hi / 2.0
    return (lo * hi) ** 0.5


def calibrate_alpha(model: nn.Module, run: Callable[[], Any],
                    sparsity: float | Mapping[str, float]) -> dict[str, float]:
    """Set each gate's ``α`` (uniform per layer) so that ``run()`` gates its
    input at ``sparsity`` (one value, or per layer name as in ``model.gates()``).

    Runs ``run()`` once: a pre-hook on every gate sets ``α`` from the input
    that gate actually receives, so later layers see the already re-gated
    earlier ones. Returns the sparsity each gate then reached (it differs from
    the target by at most one channel, or where zero-energy channels are off
    anyway). Gates the calibration input does not reach keep their ``α``.
    """
    gates = [(n.removesuffix(".gate"), g) for n, g in model.named_modules()
             if isinstance(g, EnergyChannelGate)]
    reached: dict[str, float] = {}

    def target_of(name: str) -> float:
        if isinstance(sparsity, Mapping):
            for key in (name, name.removeprefix("net.")):
                if key in sparsity:
                    return float(sparsity[key])
            raise KeyError(f"no target sparsity for gate {name!r}")
        return float(sparsity)

    def hook(name: str, gate: EnergyChannelGate):
        def pre(module: nn.Module, inputs: tuple) -> None:
            if gate.forced_mask is None:
                with torch.no_grad():
                    gate.alpha.fill_(_alpha_for(gate, inputs[0], target_of(name)))
        return pre

    def post(name: str):
        def after(module: EnergyChannelGate, inputs: tuple, output: Any) -> None:
            reached[name] = float(module.sparsity)
        return after

    handles = []
    for name, g in gates:
        handles.append(g.register_forward_pre_hook(hook(name, g)))
        handles.append(g.register_forward_hook(post(name)))
    # gated convolutions on their sparse path call ``gate.evaluate``, not the
    # gate module, so run the masked dense path here: same decisions
    try:
        with sparse_execution(model, False):
            run()
    finally:
        for h in handles:
            h.remove()
    return reached
