"""Layer-by-layer distillation from a frozen dense teacher (``distill:`` in a recipe).

When gates are inserted into a trained model, 40–50 % of the channels feeding each gated
convolution close at once, and the R-D loss alone tells each layer only through the whole
network how to compensate. The remedy of channel pruning (He et al. 2017, "Channel pruning
for accelerating very deep neural networks") is a local target: every convolution of the
gated model should reproduce what the same convolution of the dense model it started from
outputs on the same image. :class:`FeatureDistiller` adds

``β · Σ_l mean((f_l − t_l)²) / mean(t_l²)``

over the convolutions of the transforms (``g_a``, ``g_s``, ``h_a``, ``h_s``; the entropy
models are not matched), ``f_l`` the student's output of layer ``l``, ``t_l`` the
teacher's. The teacher sees the same batch at the same λ and draws the same quantisation
noise (the random generators are replayed), so the target differs from the student only by
what the gates and the training since changed. Names match because a gated convolution
replaces the dense one in place (:class:`~varicodec.layers.GatedConv2d`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models import VaricodecModel
from ..models.registry import create_model
from .init import load_init

__all__ = ["DISTILLED_PARTS", "FeatureDistiller", "dense_teacher"]

#: the top-level modules of ``model.net`` whose convolutions are matched
DISTILLED_PARTS = ("g_a", "g_s", "h_a", "h_s")

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def dense_teacher(student: VaricodecModel, spec: str, progress: bool = False) -> VaricodecModel:
    """The dense model of ``student``'s architecture and width (``base`` for a fixed-rate
    student, ``bm`` for a variable-rate one) loaded from ``spec`` and frozen (no gradients)."""
    variant = "bm" if student.variable_rate else "base"
    config = {k: v for k, v in student.config.items() if k not in ("arch", "variant", "gate")}
    teacher = create_model(f"{student.arch}-{variant}", **config)
    load_init(teacher, spec, progress=progress)
    teacher.requires_grad_(False)
    return teacher.to(next(student.parameters()).device)


def _matched_convs(model: nn.Module) -> dict[str, nn.Module]:
    prefixes = tuple(f"net.{p}." for p in DISTILLED_PARTS)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, _CONVS) and n.startswith(prefixes)}


class FeatureDistiller:
    """Hooks on the matched convolutions of ``student`` and ``teacher``; after
    :meth:`teacher_forward` and the student's own forward, :meth:`loss` is the term above
    (unweighted). The teacher keeps training-mode quantisation noise (the entropy models'
    ``training`` flag follows the student) but no gradient. The student's outputs are
    kept only between :meth:`teacher_forward` and :meth:`loss`, so its other forwards
    (validation, evaluation) hold nothing."""

    def __init__(self, student: VaricodecModel, teacher: VaricodecModel) -> None:
        s, t = _matched_convs(student), _matched_convs(teacher)
        odd = sorted(set(s) ^ set(t)) or [n for n in s if s[n].weight.shape != t[n].weight.shape]
        if not s or odd:
            example = ", ".join(odd[:4]) or "none in the transforms"
            raise ValueError(f"teacher {teacher.name} does not match student {student.name}'s "
                             f"convolutions (e.g. {example})")
        self.student, self.teacher = student, teacher
        self.names = list(s)
        self._student_out: dict[str, Tensor] = {}
        self._teacher_out: dict[str, Tensor] = {}
        self._armed = False  # set by teacher_forward, cleared by loss
        self._handles = [m.register_forward_hook(self._hook(self._student_out, n))
                         for n, m in s.items()]
        self._handles += [m.register_forward_hook(self._hook(self._teacher_out, n))
                          for n, m in t.items()]

    def _hook(self, store: dict, name: str):
        def hook(module, inputs, output):
            if self._armed:
                store[name] = output
        return hook

    @torch.no_grad()
    def teacher_forward(self, x: Tensor, lmbda: Tensor) -> None:
        """Run the teacher on the batch; the random generators are rewound afterwards, so
        the student's forward draws the same quantisation noise."""
        self.teacher.train(self.student.training)
        devices = [x.device.index] if x.device.type == "cuda" else []
        self._armed = True
        with torch.random.fork_rng(devices=devices):
            self.teacher(x, lmbda=lmbda)

    def loss(self) -> Tensor:
        """``Σ_l mean((f_l − t_l)²) / mean(t_l²)`` of the last two forwards; clears them."""
        self._armed = False
        terms = []
        for n in self.names:
            f, t = self._student_out.pop(n, None), self._teacher_out.pop(n, None)
            if f is None or t is None:  # a layer that did not run (e.g. h_s in decode-only)
                continue
            t = t.float()
            terms.append((f.float() - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12))
        if not terms:
            raise RuntimeError("distillation: no matched layer ran in both models")
        return torch.stack(terms).sum()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureDistiller:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
