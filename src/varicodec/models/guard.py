"""The index guard: the same scale indexes, hence the same symbols, on any machine.

The decoder recomputes each latent's scale index from ``h_s``'s float output. Float
noise that differs between machines (kernel sets, thread counts, devices) can move a
scale across a boundary of the scale table, and one index that differs from the
encoder's desynchronises the rANS stream. :class:`IndexGuard` makes those decisions
robust:

* the **encoder** finds every latent whose scale lies within a small relative margin
  (:data:`INDEX_MARGIN`; wider at small scales for mean-scale and joint models,
  :func:`absolute_margin`) of a boundary, codes it with the index above that boundary
  whichever side it fell on, and names those latents in the **guard stream**: their
  numbers (positions mode) or a short hash of each (hash mode, format version 4 on),
  whichever is shorter;
* the **decoder** gives the named latents the index above their nearest boundary, and
  every other latent ``build_indexes``'s own; far from a boundary the two machines agree;
* both sides hash the entropy-coded symbols; the guard stream carries the encoder's
  hash, and :meth:`VaricodecModel.decompress
  <varicodec.models.codec_model.VaricodecModel.decompress>` raises
  :class:`~varicodec.errors.DesyncError` when the decoder's differs, never returning a
  garbage picture.

docs/FORMAT.md specifies the stream; docs/results/portability.md measures the margins,
the rate and time overhead, and the machines tried.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ABSOLUTE_MARGIN", "ABSOLUTE_MARGIN_ARCHS", "ABSOLUTE_MARGIN_LMBDA", "GUARD_MODES",
    "HASH_THRESHOLD", "INDEX_MARGIN", "HashSet", "IndexGuard", "absolute_margin",
    "guard_is_hash_mode", "pack_guard", "read_guards", "unpack_guard",
]

#: A latent whose predicted scale ``s`` lies within ``|s / t − 1| < INDEX_MARGIN`` of a
#: scale-table boundary ``t`` gets its index made explicit in the guard stream. The
#: largest difference between two CPU kernel sets measured on Kodak is 4.3e-6
#: (docs/results/portability.md), so 1e-5 leaves a factor of 2.3.
INDEX_MARGIN = 1e-5

#: Format version 5 on, mean-scale and joint models: the margin at boundary ``t`` is
#: ``max(INDEX_MARGIN, A / t)`` relative, i.e. at least ``A`` absolute, with
#: ``A = ABSOLUTE_MARGIN`` at ``λ ≥ ABSOLUTE_MARGIN_LMBDA`` and
#: ``ABSOLUTE_MARGIN · (λ / ABSOLUTE_MARGIN_LMBDA)^⅓`` below (:func:`absolute_margin`).
#: Their ``h_s`` (no final ReLU: it outputs means and scales, or the parameters the
#: joint model's entropy-parameter network reads) computes small scales as differences
#: of large terms, so the kernels' noise there is absolute, up to 5.2e-6 at quality 8
#: (1.2e-6 at 4, 7.4e-7 at 1: it grows about as λ^½), and relative, at most 4.5e-6,
#: at large scales (docs/results/portability.md).
ABSOLUTE_MARGIN = 1e-5
#: the λ (CompressAI's quality 8) from which the absolute margin is ``ABSOLUTE_MARGIN``
ABSOLUTE_MARGIN_LMBDA = 0.18
#: the architectures :data:`ABSOLUTE_MARGIN` applies to
ABSOLUTE_MARGIN_ARCHS = ("mean", "joint")


def absolute_margin(lmbda: float) -> float:
    """The absolute margin at λ (:data:`ABSOLUTE_MARGIN`), rounded to 12 decimals so
    that encoder and decoder agree on it exactly whatever their libm."""
    return round(ABSOLUTE_MARGIN * min(1.0, (float(lmbda) / ABSOLUTE_MARGIN_LMBDA) ** (1 / 3)),
                 12)




_CHECK = struct.Struct(">I")

#: Hash mode (format version 4): the decoder's "near a boundary" threshold. A latent
#: whose hash is in the sent set is forced iff its own relative distance to the
#: nearest boundary is below this; it must exceed ``INDEX_MARGIN`` plus the largest
#: float noise (the encoder keeps every hashed latent ``INDEX_MARGIN`` away from it).
HASH_THRESHOLD = 2e-5
#: seeds the encoder may try per hash width (the mode byte holds 4 bits of seed)
HASH_SEEDS = 16
#: widest hash, in bits (hashes are 32-bit; the top ``bits`` are kept)
HASH_MAX_BITS = 31
#: mode byte of a hash-mode stream: ``HASH_MODE_BASE + 16 · Δ + seed``, where
#: ``bits = bit_length(count) + Δ``, ``Δ`` 0 … 13; a positions-mode stream has its
#: Rice parameter (0 … 24) in that byte
HASH_MODE_BASE = 32
_MASK32 = np.uint64(0xFFFFFFFF)
#: guard modes of :meth:`VaricodecModel.compress`
GUARD_MODES = ("auto", "positions", "hash")


class HashSet(NamedTuple):
    """A hash-mode guard of one batch element: the ``bits``-bit hashes under ``seed``
    of the latents the decoder forces (sorted, distinct)."""

    bits: int
    seed: int
    values: np.ndarray


def _guard_hash(numbers: np.ndarray | Tensor, seed: int) -> np.ndarray:
    """The 32-bit hash of latent numbers (local to the batch element) under ``seed``:
    murmur3's finaliser of ``number XOR (seed · 0x9E3779B9 mod 2³²)``, in uint32
    arithmetic (numpy uint64 and a mask). Hash mode keeps its top ``bits`` bits
    (``h >> (32 − bits)``). Pinned by ``tests/test_portability.py``; docs/FORMAT.md."""
    h = np.asarray(numbers).astype(np.uint64) & _MASK32
    h ^= np.uint64((seed * 0x9E3779B9) & 0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    h ^= h >> np.uint64(16)
    return h


def _guard_hash_int(number: int, seed: int) -> int:
    """:func:`_guard_hash` of one number, in Python integers: for the few latents of one
    wavefront, a dozen integer operations instead of a dozen numpy calls (each of which,
    between the joint decoder's convolutions, costs several microseconds)."""
    h = (number & 0xFFFFFFFF) ^ ((seed * 0x9E3779B9) & 0xFFFFFFFF)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


#: up to this many latents, :func:`_hash_rule` hashes in Python integers
_HASH_RULE_INT = 16


def _top_bits(h: np.ndarray, bits: int) -> np.ndarray:
    return h >> np.uint64(32 - bits)


def _choose_hash(numbers: np.ndarray, dist: np.ndarray,
                 margin: float) -> tuple[HashSet, np.ndarray] | None:
    """The encoder's hash-mode selection for one batch element.

    ``numbers`` / ``dist``: the latents with ``dist < HASH_THRESHOLD + margin`` (no
    other latent can matter) and their relative distance to the nearest boundary.
    G = {dist < margin} must be forced. For ``bits`` = bit_length(|G|) … 31 and
    ``seed`` = 0 … 15: H = the hashes of G; the *danger* latents are those with a
    hash in H and ``|dist − HASH_THRESHOLD| < margin`` (their "below the threshold"
    test could come out otherwise on the decoder). The first (bits, seed) without
    danger is taken. Returns it with the mask (over ``numbers``) of the latents the
    encoder forces, {hash ∈ H and dist < HASH_THRESHOLD} ⊇ G; ``None`` if G is
    empty or no choice is safe (the caller then writes positions).

    Why the decoder forces exactly the same latents and computes the same indexes,
    given scales within a relative ``margin`` of the encoder's:

    * a latent whose ``build_indexes`` could flip lies within ``margin`` of a
      boundary, so it is in G: its hash is in H and its distance is below the
      threshold on both sides, so both force it, to ``k + 1`` of the same boundary;
    * a latent with a hash in H whose distance lies within ``margin`` of the
      threshold does not exist (the seed search excludes it), so every latent with
      a hash in H is below the threshold on both sides or above it on both;
    * every other latent is decided by ``build_indexes`` identically on both sides.
    """
    g = dist < margin
    n_g = int(g.sum())
    if not n_g:
        return None
    danger = np.abs(dist - HASH_THRESHOLD) < margin
    if (g & danger).any():
        return None  # a margin this wide leaves no safe threshold
    full = [_guard_hash(numbers, seed) for seed in range(HASH_SEEDS)]
    for bits in range(n_g.bit_length(), HASH_MAX_BITS + 1):
        for seed, h in enumerate(full):
            top = _top_bits(h, bits)
            values = np.unique(top[g])
            if bits - len(values).bit_length() > 13:
                continue  # Δ does not fit the mode byte
            if np.isin(top[danger], values).any():
                continue
            return HashSet(bits, seed, values), np.isin(top, values) & (dist < HASH_THRESHOLD)
    return None


def _hash_rule(numbers: np.ndarray, dist: np.ndarray, hashed: HashSet) -> np.ndarray:
    """The decoder's hash-mode rule: which of the latents ``numbers`` (local to the
    batch element) at relative distance ``dist`` from their nearest boundary it forces
    (``dist < HASH_THRESHOLD`` and the hash in the sent set)."""
    below = dist < HASH_THRESHOLD
    if not below.any():
        return below
    if len(numbers) <= _HASH_RULE_INT:  # one wavefront's few: no numpy per step
        shift, seed = 32 - hashed.bits, hashed.seed
        values = set(hashed.values.tolist())
        return np.array([b and (_guard_hash_int(n, seed) >> shift) in values
                         for n, b in zip(numbers.tolist(), below.tolist())], dtype=bool)
    top = _top_bits(_guard_hash(numbers, hashed.seed), hashed.bits)
    # hashed.values is sorted and distinct (the stream's gaps): a binary search is
    # several times faster than np.isin on the few latents of one wavefront
    at = np.searchsorted(hashed.values, top).clip(max=len(hashed.values) - 1)
    return below & (hashed.values[at] == top)


def _near_boundaries(gc: nn.Module, scales: Tensor, idx: Tensor, within: float,
                     widths: Tensor | None = None,
                     cache: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The latents of one ``build_indexes`` call whose raw scale lies within a relative
    ``within`` of a scale-table boundary (``within · widths[k]`` at boundary ``k``):
    (positions in the call, ascending, on the CPU; nearest boundary ``k``; distance
    in those units), exactly as :func:`_nearest_boundary`.

    :func:`_nearest_boundary` (float64) over every latent costs ~12 ms per Kodak
    image, 5 % of a decode; so a float32 pass (< 1 ms) first keeps the latents whose
    scale ``s`` lies within about ``2 · within`` of the boundaries on either side of
    the index ``i`` that ``build_indexes`` gave, ``t_{i−1} < s ≤ t_i``:
    ``s ≥ t_i (1 − 2·within)`` or ``s ≤ t_{i−1} (1 + 2·within)`` (one-sided tests, so
    an index off by one near a boundary still keeps the latent), and only those get
    the exact float64 distance. This needs the scale bound at or below the first
    boundary (as in CompressAI: a scale below it has index 0); otherwise every latent
    goes to the exact pass. ``cache``: a dict the caller keeps for calls with the
    same ``gc``, ``within`` and ``widths`` (the joint decoder makes one call per
    wavefront), which then holds the windows and tables.
    """
    flat = scales.reshape(-1)
    if flat.device.type == "cpu":  # numpy throughout: µs per call on one wavefront
        pos, k, dist = _near_boundaries_np(gc, flat, idx, within, widths, cache)
        return torch.from_numpy(pos), torch.from_numpy(k), torch.from_numpy(dist)
    windows = _cached(cache, ("torch", within, flat.device),
                      _windows, gc, within, widths, flat.device)
    if within <= 0:
        pre = torch.zeros(0, dtype=torch.int64, device=flat.device)
    elif windows:
        above, below = windows
        s, i = flat.float(), idx.reshape(-1).to(flat.device)  # int32, _scale_indexes
        pre = ((s >= above.index_select(0, i)) | (s <= below.index_select(0, i)))
        pre = pre.nonzero().squeeze(1)
    else:
        pre = torch.arange(flat.numel(), device=flat.device)
    if not pre.numel():
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0, dtype=torch.float64)
    k, dist = _nearest_boundary(flat[pre], gc.scale_table[:-1], widths)
    keep = dist < within
    return pre.cpu()[keep], k[keep], dist[keep]


def _cached(cache: dict | None, key, make, *args):
    """``cache[key]``, made by ``make(*args)`` on first use (no cache: made every time).
    Arguments rather than a closure, so a caller on the joint decoder's per-wavefront
    path makes no function object per call."""
    if cache is None:
        return make(*args)
    value = cache.get(key)
    if value is None:
        value = cache[key] = make(*args)
    return value


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)


def _near_boundaries_np(gc: nn.Module, flat: Tensor, idx: Tensor, within: float,
                        widths: Tensor | None, cache: dict | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_near_boundaries` on the CPU, as numpy arrays: the same float32
    pre-selection and float64 distances, with the windows, the table and the widths
    converted once per ``cache``. The joint decoder calls this once per wavefront,
    right after the context model and the entropy parameters, where every call runs
    with cold caches (docs/results/portability.md): so as few calls as it can make."""
    if within <= 0:
        return _EMPTY_I64, _EMPTY_I64, _EMPTY_F64
    windows, table, w64 = _cached(cache, ("numpy", within), _numpy_tables,
                                  gc, within, widths)
    sv = _scales_numpy(flat)
    if windows:
        above, below = windows
        iv = idx.reshape(-1).numpy()
        s32 = sv if sv.dtype == np.float32 else sv.astype(np.float32)
        near = s32 >= above[iv]
        near |= s32 <= below[iv]
        pre = near.nonzero()[0]
        if not pre.size:  # the usual case for one wavefront of the joint model
            return _EMPTY_I64, _EMPTY_I64, _EMPTY_F64
    else:
        pre = np.arange(sv.size)
    k, dist = _nearest_boundary_np(sv[pre], table, w64)
    keep = dist < within
    return pre[keep], k[keep], dist[keep]


def _numpy_tables(gc: nn.Module, within: float, widths: Tensor | None
                  ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray | None]:
    """:func:`_near_boundaries_np`'s tables: the float32 windows, the float64 boundaries
    and widths."""
    w = _windows(gc, within, widths, "cpu")
    return (tuple(x.numpy() for x in w), *_float64_tables(gc, widths))


def _float64_tables(gc: nn.Module, widths: Tensor | None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """The boundaries ``scale_table[:-1]`` and the widths as float64 numpy arrays."""
    return (gc.scale_table[:-1].detach().to("cpu", torch.float64).numpy(),
            None if widths is None else widths.detach().to("cpu", torch.float64).numpy())


def _scales_numpy(flat: Tensor) -> np.ndarray:
    """Raw scales as a CPU numpy array, float32 or float64 as they are (others: float32)."""
    flat = flat.detach()
    if flat.dtype == torch.float32 and flat.device.type == "cpu":
        return flat.numpy()  # the decoder's per-wavefront case: no further calls
    return (flat if flat.dtype in (torch.float32, torch.float64) else flat.float()).cpu().numpy()


def _windows(gc: nn.Module, within: float, widths: Tensor | None,
             device) -> tuple[Tensor, Tensor] | tuple[()]:
    """:func:`_near_boundaries`' float32 pre-selection windows per index ``i``: a scale
    at or above ``above[i]`` or at or below ``below[i]`` goes to the exact pass; ``()``
    where the pre-selection does not apply (scale bound above the first boundary, or
    a window of 10⁻³ or more)."""
    table = gc.scale_table[:-1]
    bound = getattr(getattr(gc, "lower_bound_scale", None), "bound", None)
    wide = within * (1 if widths is None else float(widths.max()))
    if within <= 0 or bound is None or float(bound) > float(table[0]) or wide >= 1e-3:
        return ()
    t = table.to(device, torch.float32)
    w = within if widths is None else within * widths.to(device, torch.float32)
    inf = torch.full((1,), float("inf"), device=device)
    return (torch.cat([t * (1 - 2 * w), inf]),  # index i: near t_i from below
            torch.cat([-inf, t * (1 + 2 * w)]))  # index i: near t_{i−1} from above


def _nearest_boundary(scales: Tensor, table: Tensor,
                      widths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For each raw scale (flattened): the nearest boundary ``k`` of ``table`` and the
    relative distance ``|s / t_k − 1|`` to it (float64, on the CPU), divided by
    ``widths[k]`` if given: in those units every boundary's margin and hash
    threshold are the same numbers (:data:`ABSOLUTE_MARGIN`).

    The boundaries are CompressAI's ``scale_table[:-1]``: ``build_indexes`` gives a
    scale just above ``t_k`` index ``k + 1``, one at or below it index ``k``.
    """
    s = scales.detach().reshape(-1).to("cpu", torch.float64).numpy()
    t = table.detach().to("cpu", torch.float64).numpy()
    w = None if widths is None else widths.detach().to("cpu", torch.float64).numpy()
    k, dist = _nearest_boundary_np(s, t, w)
    return torch.from_numpy(k), torch.from_numpy(dist)


def _nearest_boundary_np(s: np.ndarray, t: np.ndarray,
                         w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_nearest_boundary` on numpy arrays (``t``, ``w`` float64; ``s`` any
    float, converted): numpy costs a fraction of torch's per-call overhead on the few
    latents of one wavefront (the joint decoder calls this once per wavefront)."""
    s = s.astype(np.float64, copy=False)
    j = np.searchsorted(t, s).clip(1, len(t) - 1)
    k = np.where(np.abs(t[j] - s) < np.abs(s - t[j - 1]), j, j - 1)
    dist = np.abs(s / t[k] - 1)
    if w is not None:
        dist = dist / w[k]
    return k.astype(np.int64, copy=False), dist


def _scale_indexes(gc: nn.Module, scales: Tensor) -> Tensor:
    """``GaussianConditional.build_indexes``, the same integers in one search instead
    of CompressAI's 63 passes: the index of a scale is the number of boundaries
    ``scale_table[:-1]`` strictly below its lower-bounded value (NaN: the last index).
    ``tests/test_portability.py`` checks it against CompressAI's loop."""
    bound = getattr(gc.lower_bound_scale, "bound", None)
    if bound is not None and not scales.requires_grad:
        # LowerBound's forward is torch.max(x, bound); called directly, without its
        # autograd Function, it costs a fraction on the few latents of one wavefront
        scales = torch.maximum(scales, bound.to(scales.device))
    else:
        scales = gc.lower_bound_scale(scales)
    table = gc.scale_table[:-1].to(scales.device, scales.dtype)
    return torch.searchsorted(table, scales.reshape(-1).contiguous(),
                              out_int32=True).view(scales.shape)


class IndexGuard:
    """Guards the scale indexes of one ``compress`` / ``decompress`` call and collects
    the entropy-coded symbols for the symbol check.

    Installed as instance attributes that shadow ``build_indexes``, ``quantize`` and
    ``dequantize`` of the model's ``GaussianConditional``, so CompressAI's own
    ``compress`` / ``decompress`` (and the joint model's position-by-position loops)
    run unchanged. Latents are numbered in coding order across the batch: element
    ``b``'s latent ``i`` is ``b · per_item + i`` (C×H×W order for the hyperprior and
    mean models, position then channel for the joint model, positions in sequential
    or wavefront order).

    * encoder (``margin``): a latent whose scale lies within ``margin`` of boundary
      ``t_k`` is coded with index ``k + 1``, whichever side it fell on. How the
      decoder learns which: *positions mode* lists their numbers
      (:attr:`positions`); *hash mode* (``mode`` ``"hash"`` or ``"auto"``, only for
      a ``build_indexes`` call that covers whole batch elements, so that all their
      scales are known before any index is decided) sends a short hash of each and
      forces a few more latents, see :func:`_choose_hash` (:attr:`hashed`, per
      element). ``"auto"`` writes whichever stream is shorter.
    * decoder (``forced`` numbers, ``hashed`` per element): at the forced numbers,
      and at the latents the hash rule selects (:func:`_hash_rule`), the index is
      ``k + 1`` for the boundary ``k`` nearest to the decoder's own scale (float
      noise is ~10⁴ times smaller than the 13 % gap between boundaries); elsewhere
      it is ``build_indexes``'s.
    """

    def __init__(self, gc: nn.Module, margin: float | None = None,
                 forced: Tensor | None = None, *, per_item: int | None = None,
                 mode: str = "positions", hashed: dict[int, HashSet] | None = None,
                 widths: Tensor | None = None) -> None:
        if mode not in GUARD_MODES:
            raise ValueError(f"unknown guard mode {mode!r}; choose from {GUARD_MODES}")
        self.gc, self.margin, self.forced, self.widths = gc, margin, forced, widths
        self._windows: dict = {}  # _near_boundaries' float32 windows, per margin
        self.per_item, self.mode = per_item, mode
        self.hashed: dict[int, HashSet] = dict(hashed or {})
        self.count = 0
        self.positions: list[Tensor] = []
        self.symbols: list[Tensor] = []

    def build_indexes(self, scales: Tensor) -> Tensor:
        idx = _scale_indexes(self.gc, scales)
        start, n = self.count, scales.numel()
        self.count += n
        flat = idx.view(-1)
        if self.margin is not None:
            sel, k = self._encode_call(scales, idx, start, n)
            if sel.numel():
                flat[sel.to(flat.device)] = (k + 1).to(flat.device, flat.dtype)
        else:
            sel_np, k_np = self._decode_call(scales, idx, start, n)
            if sel_np.size:
                flat[torch.from_numpy(sel_np).to(flat.device)] = \
                    torch.from_numpy(k_np + 1).to(flat.device, flat.dtype)
        return idx

    def _encode_call(self, scales: Tensor, idx: Tensor, start: int,
                     n: int) -> tuple[Tensor, Tensor]:
        """Encoder: (positions in this call, boundaries) of the latents to force."""
        assert self.margin is not None
        per = self.per_item
        whole = (self.mode != "positions" and per is not None and per > 0
                 and start % per == 0 and n % per == 0)
        within = HASH_THRESHOLD + self.margin if whole else self.margin
        pos, k, dist = _near_boundaries(self.gc, scales, idx, within, self.widths,
                                        self._windows)
        if not whole:
            if pos.numel():
                self.positions.append(pos + start)
            return pos, k
        assert per is not None
        sels: list[Tensor] = []
        ks: list[Tensor] = []
        for j in range(n // per):
            lo = j * per
            part = ((pos >= lo) & (pos < lo + per)).nonzero().squeeze(1)
            numbers, d = (pos[part] - lo).numpy(), dist[part].numpy()
            g = d < self.margin
            pick = _choose_hash(numbers, d, self.margin) if g.any() else None
            if pick is not None:
                hashed, mask = pick
                if self.mode == "hash" or (len(_hash_tail(hashed))
                                           < len(_positions_tail(numbers[g]))):
                    self.hashed[(start + lo) // per] = hashed
                    chosen = part[torch.from_numpy(mask)]
                    sels.append(pos[chosen])
                    ks.append(k[chosen])
                    continue
            if g.any():
                chosen = part[torch.from_numpy(g)]
                self.positions.append(pos[chosen] + start)
                sels.append(pos[chosen])
                ks.append(k[chosen])
        return _joined(sels, ks)

    def _decode_call(self, scales: Tensor, idx: Tensor, start: int,
                     n: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoder: (positions in this call, boundaries) of the latents to force, as
        numpy arrays (numpy throughout: the joint decoder calls this per wavefront)."""
        sels: list[np.ndarray] = []
        ks: list[np.ndarray] = []
        if self.forced is not None and self.forced.numel():
            forced = self.forced.numpy()
            sel = forced[(forced >= start) & (forced < start + n)] - start
            if sel.size:
                table, w64 = _cached(self._windows, "tables",
                                     _float64_tables, self.gc, self.widths)
                sels.append(sel)
                ks.append(_nearest_boundary_np(_scales_numpy(scales.reshape(-1))[sel],
                                               table, w64)[0])
        per = self.per_item
        if self.hashed and per:
            items = [b for b in range(start // per, (start + n - 1) // per + 1)
                     if b in self.hashed]
            if items:
                if scales.device.type == "cpu":  # numpy end to end
                    pos, k, dist = _near_boundaries_np(self.gc, scales.reshape(-1), idx,
                                                       HASH_THRESHOLD, self.widths,
                                                       self._windows)
                else:
                    pos, k, dist = (t.numpy() for t in _near_boundaries(
                        self.gc, scales, idx, HASH_THRESHOLD, self.widths, self._windows))
                number = pos + start  # across the batch; ascending
                for b in items if pos.size else []:
                    lo, hi = np.searchsorted(number, [b * per, (b + 1) * per])
                    mask = _hash_rule(number[lo:hi] - b * per, dist[lo:hi], self.hashed[b])
                    sels.append(pos[lo:hi][mask])
                    ks.append(k[lo:hi][mask])
        if not sels:
            return _EMPTY_I64, _EMPTY_I64
        return np.concatenate(sels), np.concatenate(ks)

    def quantize(self, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        out = type(self.gc).quantize(self.gc, inputs, mode, means)
        if mode == "symbols":
            self.symbols.append(out.detach().reshape(-1).to("cpu", torch.int32))
        return out

    def dequantize(self, inputs: Tensor, means: Tensor | None = None,
                   dtype: torch.dtype = torch.float) -> Tensor:
        self.symbols.append(inputs.detach().reshape(-1).to("cpu", torch.int32))
        return type(self.gc).dequantize(inputs, means, dtype)

    def __enter__(self) -> IndexGuard:
        for name in ("build_indexes", "quantize", "dequantize"):
            setattr(self.gc, name, getattr(self, name))
        return self

    def __exit__(self, *exc) -> None:
        for name in ("build_indexes", "quantize", "dequantize"):
            self.gc.__dict__.pop(name, None)

    def checks(self, batch: int) -> list[int]:
        """CRC-32 of each batch element's symbols (int32, little-endian, coding order)."""
        symbols = torch.cat(self.symbols) if self.symbols else torch.zeros(0, dtype=torch.int32)
        if symbols.numel() % batch:
            raise ValueError("decoded symbol count does not match the batch")
        return [zlib.crc32(part.numpy().astype("<i4").tobytes())
                for part in symbols.view(batch, -1)]

    def item_positions(self, batch: int, per_item: int) -> list[np.ndarray]:
        """The recorded latent numbers, split per batch element (local numbers)."""
        pos = torch.cat(self.positions).numpy() if self.positions else np.zeros(0, np.int64)
        return [pos[(pos >= b * per_item) & (pos < (b + 1) * per_item)] - b * per_item
                for b in range(batch)]

    def streams(self, batch: int) -> list[bytes]:
        """The encoder's guard stream of each batch element (:func:`pack_guard`): its
        symbol check and the latents it guarded."""
        assert self.per_item is not None
        positions = self.item_positions(batch, self.per_item)
        return [pack_guard(c, p, self.hashed.get(b))
                for b, (c, p) in enumerate(zip(self.checks(batch), positions))]


def read_guards(streams: list[bytes], per_item: int
                ) -> tuple[list[int], Tensor, dict[int, HashSet]]:
    """A batch's guard streams, parsed for the decoder (:func:`unpack_guard`): each
    element's symbol check, the latent numbers to force across the batch (positions
    mode; element ``b``'s latent ``i`` is ``b · per_item + i``) and the hash sets by
    element (hash mode), as :class:`IndexGuard` takes them."""
    guards = [unpack_guard(s, per_item) for s in streams]
    hashed = {b: h for b, (_, h) in enumerate(guards) if isinstance(h, HashSet)}
    forced = torch.from_numpy(np.concatenate(
        [np.zeros(0, np.int64)] + [p + b * per_item for b, (_, p) in enumerate(guards)
                                   if not isinstance(p, HashSet)]))
    return [check for check, _ in guards], forced, hashed


def _joined(sels: list[Tensor], ks: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The forced positions and their boundaries gathered by an encode or decode call
    (two empty int64 tensors when there are none)."""
    if not sels:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(sels), torch.cat(ks)


def _rice_bits(gaps: np.ndarray) -> tuple[int, bytes]:
    """The Rice parameter ``r`` (0 … 24) that codes ``gaps`` shortest, and the gaps
    coded with it: the quotient ``gap >> r`` in unary (ones ended by a zero), then
    the ``r`` low bits, MSB first; bit-packed, zero-padded."""
    r = min(range(25), key=lambda r: int((gaps >> r).sum()) + len(gaps) * (r + 1))
    bits: list[int] = []
    for g in gaps.tolist():
        bits += [1] * (g >> r) + [0] + [(g >> i) & 1 for i in range(r - 1, -1, -1)]
    return r, np.packbits(np.array(bits, np.uint8)).tobytes()


def _gaps(values: np.ndarray) -> np.ndarray:
    return np.diff(np.asarray(values, np.int64), prepend=-1) - 1


def _positions_tail(positions: np.ndarray) -> bytes:
    """Positions mode, after the check: count (varint), Rice parameter, gaps."""
    r, data = _rice_bits(_gaps(positions))
    return _varint(len(positions)) + bytes([r]) + data


def _hash_tail(hashed: HashSet) -> bytes:
    """Hash mode (format version 4), after the check: count (varint), mode byte
    ``HASH_MODE_BASE + 16 · Δ + seed`` (``bits = bit_length(count) + Δ``), Rice
    parameter, gaps of the sorted distinct hash values."""
    n = len(hashed.values)
    delta = hashed.bits - n.bit_length()
    if not (n and 0 <= delta <= 13 and 0 <= hashed.seed < HASH_SEEDS
            and hashed.bits <= HASH_MAX_BITS):
        raise ValueError("hash-mode guard out of range")
    r, data = _rice_bits(_gaps(hashed.values))
    return _varint(n) + bytes([HASH_MODE_BASE + 16 * delta + hashed.seed, r]) + data


def pack_guard(check: int, positions: np.ndarray, hashed: HashSet | None = None) -> bytes:
    """The guard stream: ``check`` (4 bytes), then, if any latent is guarded, either
    their numbers (positions mode: count varint, Rice parameter ``r`` ≤ 24, the gaps
    ``pos − previous − 1`` with previous = −1, Rice-coded) or, given ``hashed``,
    the hash-mode tail (:func:`_hash_tail`; its mode byte is ≥ ``HASH_MODE_BASE``,
    which tells the two apart)."""
    out = _CHECK.pack(check)
    if hashed is not None:
        return out + _hash_tail(hashed)
    if not len(positions):
        return out
    return out + _positions_tail(positions)


def guard_is_hash_mode(stream: bytes) -> bool:
    """Whether a guard stream is in hash mode (the byte after its count is
    ≥ ``HASH_MODE_BASE``; :func:`pack_guard`). Only format version 4 writes it; a
    malformed stream answers ``False`` and fails in :func:`unpack_guard`."""
    pos = _CHECK.size
    while pos < len(stream) and stream[pos] & 0x80:   # the count's varint
        pos += 1
    return pos + 1 < len(stream) and stream[pos + 1] >= HASH_MODE_BASE


def unpack_guard(stream: bytes, per_item: int) -> tuple[int, np.ndarray | HashSet]:
    """Inverse of :func:`pack_guard`: ``(check, latent numbers)`` for a positions-mode
    stream, ``(check, HashSet)`` for a hash-mode one; ``ValueError`` for a malformed
    stream or a number outside ``[0, per_item)``."""
    if len(stream) < _CHECK.size:
        raise ValueError("guard stream shorter than its symbol check")
    (check,) = _CHECK.unpack_from(stream)
    if len(stream) == _CHECK.size:
        return check, np.zeros(0, np.int64)
    n, pos = 0, _CHECK.size
    for shift in range(0, 35, 7):
        if pos >= len(stream):
            raise ValueError("guard stream truncated")
        b = stream[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
    else:
        raise ValueError("guard stream: count too long")
    if n == 0 or pos >= len(stream):
        raise ValueError("guard stream: bad count or Rice parameter")
    mode = stream[pos]
    if mode <= 24:  # positions mode: the byte is the Rice parameter
        if n > per_item:
            raise ValueError("guard stream: bad count or Rice parameter")
        return check, _rice_values(stream, pos + 1, n, mode, per_item,
                                   "guard stream names a latent outside the image")
    if mode < HASH_MODE_BASE:
        raise ValueError("guard stream: bad count or Rice parameter")
    delta, seed = divmod(mode - HASH_MODE_BASE, 16)
    bits = n.bit_length() + delta
    if bits > HASH_MAX_BITS:
        raise ValueError("guard stream: hash wider than 31 bits")
    if pos + 1 >= len(stream) or stream[pos + 1] > 24:
        raise ValueError("guard stream: bad Rice parameter")
    values = _rice_values(stream, pos + 2, n, stream[pos + 1], 1 << bits,
                          "guard stream: hash value out of range")
    return check, HashSet(bits, seed, values.astype(np.uint64))


def _rice_values(stream: bytes, start: int, n: int, r: int, limit: int,
                 outside: str) -> np.ndarray:
    """``n`` strictly increasing numbers below ``limit`` from Rice-coded gaps."""
    if n * (1 + r) > 8 * (len(stream) - start):
        raise ValueError("guard stream truncated")
    bits = np.unpackbits(np.frombuffer(stream, np.uint8, offset=start)).tolist()
    out, i, prev = np.empty(n, np.int64), 0, -1
    for j in range(n):
        q = 0
        while i < len(bits) and bits[i]:
            q, i = q + 1, i + 1
        if i + 1 + r > len(bits):
            raise ValueError("guard stream truncated")
        low = 0
        for b in bits[i + 1:i + 1 + r]:
            low = (low << 1) | b
        i += 1 + r
        prev = prev + 1 + ((q << r) | low)
        if prev >= limit:
            raise ValueError(outside)
        out[j] = prev
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
