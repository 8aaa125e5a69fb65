"""Does channel gating pay in wall-clock time? Sparse vs dense coding on the CPU.

For the hyperprior ``ecg`` and ``ecgbm`` models (N=128, M=192 unless told) with
their gates set to given sparsities, on Kodak images, this measures in one run:

* encode and decode wall-clock of each **execution mode** —
  ``sparse`` (the default path: live channels only; transposed convolutions in
  channels-last layout, plain ones in NCHW), ``sparse-cl`` / ``sparse-nchw``
  (the same, every layer channels-last / NCHW; separates gating from layout),
  ``masked-dense`` (``sparse_execution(model, False)``: input × gate, full conv),
  and the **baselines** ``compressai`` (CompressAI's dense ``ScaleHyperprior``
  of the same size, holding the same weights, as shipped: NCHW) and
  ``compressai-cl`` (the same in channels-last) —
  as speed-up ratios (baseline time / mode time, > 1 = faster), with
  1 and 2 threads (``torch.set_num_threads``), repetitions interleaved;
* whether the bytes of each sparse mode and ``masked-dense`` are identical;
* FLOPs counted from what executes (``FlopCounterMode``), against FLOPs predicted
  from the measured per-layer sparsity (dense FLOPs of each gated convolution ×
  its live fraction), and the FLOPs spent producing channels that a gate then
  drops (the part gating cannot save, see ``docs/results/sparse.md``);
* the cost of the gates themselves (energy, 1-D conv, threshold) as a share of
  coding time, and their per-call overhead;
* peak memory of one encode and one decode (``VmHWM``, reset before each; a
  fresh subprocess per configuration).

**Sparsities.** Without ``--weights`` the models are randomly initialised (cost
does not depend on training except through the gates and the rate), made to
look like a trained codec at about 0.5 bpp: the last analysis layer is scaled so
that ``std(y) = 0.35`` (quantisation then keeps ~15 % of latents non-zero),
``h_a``'s last layer so that ``std(z) = 2``, and ``h_s`` is made to predict
scales ≈ 0.35. Then :func:`varicodec.layers.calibrate_alpha` sets each gate's
``α`` (one value per layer) on the first image so that exactly the target
fraction of that layer's input channels is gated off; on the other images the
same ``α`` gives whatever sparsity it gives (reported). With ``--weights`` the
trained model is used as it is (``--sparsity trained``, the default then), or
re-calibrated to the given targets.

    nice -n 10 .venv/bin/python benchmarks/sparse_speed.py --limit 2

writes ``docs/results/sparse.json``; the Markdown tables go to stdout and to
``--markdown`` if given. The environment (load average before and after,
threads, OpenMP wait policy) is stored with the results. The OpenMP wait policy
defaults to ``passive`` here: on a shared CPU, workers spinning after each
parallel region take the core from the main thread and turn every small
operation into a scheduler time slice (measured: a gate decision at 2 threads
took 31 ms with the default policy, 0.28 ms with ``passive``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
OUT_JSON = ROOT / "docs" / "results" / "sparse.json"

MODES = ("sparse", "sparse-cl", "sparse-nchw", "masked-dense")
BASELINES = ("compressai", "compressai-cl")
Y_STD, Z_STD = 0.35, 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=KODAK, help="folder of Kodak PNGs")
    p.add_argument("--limit", type=int, default=2, help="number of images (0: all)")
    p.add_argument("--variants", default="ecg,ecgbm", help="hyperprior variants, comma-separated")
    p.add_argument("--N", type=int, default=128)
    p.add_argument("--M", type=int, default=192)
    p.add_argument("--sparsity", default=None,
                   help="comma-separated targets, e.g. 0.3,0.5,0.6,0.7, or 'trained' "
                        "(default: 0.3,0.5,0.6,0.7; 'trained' with --weights)")
    p.add_argument("--layouts-at", default="0.5",
                   help="sparsities at which sparse-cl and sparse-nchw also run "
                        "('all', 'none', or a list)")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per image")
    p.add_argument("--lmbda", type=float, default=0.013, help="λ of the variable-rate model")
    p.add_argument("--weights", type=Path, default=None,
                   help="trained weights (.safetensors) of a hyperprior ecg/ecgbm model")
    p.add_argument("--parts", default="timing,flops,gates,memory",
                   help="what to measure, comma-separated from timing, flops, gates, memory, "
                        "stages (per-stage wall-clock of one encode / decode)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-at", default="0.5,trained",
                   help="sparsities whose configurations get a memory probe ('all', or a list)")
    p.add_argument("--omp-wait-policy", choices=("passive", "active", "unset"), default="passive")
    p.add_argument("--json", type=Path, default=OUT_JSON)
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    p.add_argument("--memory-probe", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------- models
def _plain(seq, x):
    import torch

    return torch.nn.Sequential.forward(seq, x)  # without the modulator's hooks


def make_standin(model, x) -> None:
    """Scale an untrained hyperprior model so that it codes like a trained one
    at about 0.5 bpp (see the module docstring). Deterministic given ``x``."""
    import torch

    net = model.net
    with torch.no_grad():
        y = _plain(net.g_a, x)
        s = float(y.std())
        net.g_a[-1].weight.mul_(Y_STD / s)
        net.g_a[-1].bias.mul_(Y_STD / s)
        net.g_s[0].weight.mul_(s / Y_STD)  # keep g_s's activations at their scale
        z = _plain(net.h_a, _plain(net.g_a, x).abs())
        s = float(z.std())
        net.h_a[-1].weight.mul_(Z_STD / s)
        net.h_a[-1].bias.mul_(Z_STD / s)
        net.h_s[-2].weight.mul_(0.1)
        net.h_s[-2].bias.fill_(Y_STD)


def build_models(args, variants: list[str], x0):
    """``{variant: VaricodecModel}`` and the CompressAI baseline (same weights)."""
    import torch

    from varicodec.models import create_model, load_model

    models = {}
    if args.weights is not None:
        m = load_model(args.weights).eval()
        if m.arch != "hyperprior" or not m.gated:
            sys.exit(f"--weights: expected a gated hyperprior model, got {m.name}")
        models[m.variant] = m
    else:
        for v in variants:
            torch.manual_seed(0)
            m = create_model(f"hyperprior-{v}", N=args.N, M=args.M).eval()
            make_standin(m, x0)
            models[v] = m
    for m in models.values():
        m.update(force=True)
    return models, compressai_baseline(next(iter(models.values())), args.lmbda)


def compressai_baseline(model, lmbda: float):
    """CompressAI's network holding ``model``'s transforms without the gates; a gated
    variable-rate model's dense twin (the same weights, no gates) folded at ``lmbda``."""
    if not model.variable_rate:
        return model.compressai_network()
    from varicodec.models import create_model
    from varicodec.models.fold import fold_bitrate_modulator

    config = {k: v for k, v in model.config.items() if k != "gate"}
    dense = create_model(f"{model.arch}-bm", **config)
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if ".gate." not in k})
    return fold_bitrate_modulator(dense, lmbda).compressai_network()


def alpha_state(model) -> dict[str, Any]:
    return {n: g.alpha.detach().clone() for n, g in model.gates()}


def load_alpha(model, state: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, g in model.gates():
            g.alpha.copy_(state[n])


# ------------------------------------------------------------------- running
class Runner:
    """One configuration: how to encode and decode an image, timed."""

    def __init__(self, name: str, model, mode: str, lmbda: float | None) -> None:
        self.name, self.model, self.mode, self.lmbda = name, model, mode, lmbda
        self.varicodec = mode in MODES

    def setup(self) -> None:
        import torch

        from varicodec.layers import sparse_execution

        if self.varicodec:
            layout = {"sparse-cl": True, "sparse-nchw": False}.get(self.mode)
            sparse_execution(self.model, self.mode != "masked-dense", channels_last=layout)
        else:
            fmt = torch.channels_last if self.mode == "compressai-cl" else torch.contiguous_format
            self.model.to(memory_format=fmt)

    def prepare(self, x):
        import torch

        if self.mode == "compressai-cl":
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def encode(self, x) -> dict:
        import torch

        with torch.no_grad():
            if self.varicodec:
                return self.model.compress(x, self.lmbda)
            return self.model.compress(x)

    def decode(self, c: dict):
        import torch

        with torch.no_grad():
            if self.varicodec:
                return self.model.decompress(c["strings"], c["shape"], c["lmbda_code"])[
                    "x_hat"]
            return self.model.decompress(c["strings"], c["shape"])["x_hat"]


def n_bytes(c: dict) -> int:
    return sum(len(s[0]) for s in c["strings"])


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t


def synthesis_timer(net):
    """Hooks that time ``g_s`` (the rest of decoding is entropy decoding + ``h_s``)."""
    box = {"t0": 0.0, "gs_s": 0.0}

    def pre(module, inputs):
        box["t0"] = time.perf_counter()

    def post(module, inputs, output):
        box["gs_s"] = time.perf_counter() - box["t0"]

    return box, [net.g_s.register_forward_pre_hook(pre), net.g_s.register_forward_hook(post)]


# --------------------------------------------------------------------- FLOPs
def layer_flops(model, run) -> dict[str, dict[str, Any]]:
    """Dense FLOPs of every convolution and GDN, from the shapes they see in
    ``run()`` (PyTorch's convention: 2 per multiply–add)."""
    from compressai.layers import GDN
    from torch import nn

    rows: dict[str, dict[str, Any]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, GDN)):
            def hook(m, inputs, out, name=name):
                x = inputs[0]
                if isinstance(m, GDN):
                    f = 2 * x.shape[1] ** 2 * x.shape[2] * x.shape[3]
                else:
                    k = m.kernel_size[0] * m.kernel_size[1]
                    px = (x.shape[2] * x.shape[3] if isinstance(m, nn.ConvTranspose2d)
                          else out.shape[2] * out.shape[3])
                    f = 2 * m.in_channels * m.out_channels // m.groups * k * px
                rows[name] = {"flops": f, "gated": hasattr(m, "gate"),
                              "kind": "gdn" if isinstance(m, GDN) else "conv"}
            handles.append(mod.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return rows


def count(run) -> int:
    from varicodec.eval.flops import count_flops

    return count_flops(run)[1]  # with the formula for InplaceGDN's oneDNN convolution


def flops_report(model, runner: Runner, x, c: dict) -> dict[str, Any]:
    """Executed vs predicted FLOPs of one sparse encode and decode."""
    from varicodec.layers import sparse_execution

    out: dict[str, Any] = {}
    for op, run in (("encode", lambda: runner.encode(x)), ("decode", lambda: runner.decode(c))):
        with sparse_execution(model, False):
            dense = count(run)
            rows = layer_flops(model, run)
        with sparse_execution(model, True):
            executed = count(run)
            run()
            sparsity = model.sparsity()
        predicted = dense
        wasted = 0
        names = list(rows)
        for i, name in enumerate(names):
            if not rows[name]["gated"]:
                continue
            s = sparsity.get(name, 0.0)
            predicted -= rows[name]["flops"] * s
            # the producer of this layer's input (previous convolution and its
            # GDN in the same Sequential) computed the dropped channels in full
            prefix = name.rpartition(".")[0]
            for prev in reversed(names[:i]):
                if prev.rpartition(".")[0] != prefix:
                    continue
                live = 1.0 - sparsity.get(prev, 0.0) if rows[prev]["gated"] else 1.0
                wasted += s * rows[prev]["flops"] * live  # what the producer executed
                if rows[prev]["kind"] == "conv":
                    break
        out[op] = {"dense": dense, "executed": executed, "predicted": int(predicted),
                   "reduction": dense / executed, "spent_on_dropped_channels": int(wasted)}
    return out


# ----------------------------------------------------------------- gate cost
def gate_cost(model, runner: Runner, x, c: dict, reps: int) -> dict[str, Any]:
    """Time of the gate decisions (energy + 1-D conv + threshold) against coding time."""
    import torch

    from varicodec.layers import gated_convolutions

    inputs: dict[str, Any] = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, a, name=name: inputs.__setitem__(name, a[0]))
        for name, m in gated_convolutions(model)]
    try:
        _, t_enc = timed(runner.encode, x)
        _, t_dec = timed(runner.decode, c)
    finally:
        for h in handles:
            h.remove()
    convs = dict(gated_convolutions(model))
    per_layer, energy_s, decide_s = {}, 0.0, 0.0
    with torch.no_grad():
        for name, xin in inputs.items():
            gate = convs[name].gate
            te, td = [], []
            for _ in range(max(reps, 5)):
                te.append(timed(gate.energy, xin)[1])
                td.append(timed(gate.evaluate, xin)[1])
            per_layer[name] = {"shape": list(xin.shape), "energy_s": median(te),
                               "decide_s": median(td)}
            energy_s += median(te)
            decide_s += median(td)
        tiny = torch.randn(1, 128, 1, 1)
        from varicodec.layers import EnergyChannelGate

        g = EnergyChannelGate(128).eval()
        for _ in range(20):
            g.evaluate(tiny)
        t = time.perf_counter()
        for _ in range(200):
            g.evaluate(tiny)
        per_call = (time.perf_counter() - t) / 200
    enc_layers = [n for n in inputs if not n.startswith("net.g_s")]
    dec_layers = [n for n in inputs if n.startswith(("net.g_s", "net.h_s"))]
    enc = sum(per_layer[n]["decide_s"] for n in enc_layers)
    dec = sum(per_layer[n]["decide_s"] for n in dec_layers)
    return {"encode_s": t_enc, "decode_s": t_dec, "gates_encode_s": enc, "gates_decode_s": dec,
            "share_encode": enc / t_enc, "share_decode": dec / t_dec,
            "energy_share_of_gate_time": energy_s / max(decide_s, 1e-12),
            "per_call_overhead_s": per_call, "gate_calls_encode": len(enc_layers),
            "gate_calls_decode": len(dec_layers), "layers": per_layer}


# -------------------------------------------------------------------- stages
def _kind(mod) -> str:
    from compressai.layers import GDN
    from torch import nn

    if isinstance(mod, GDN):
        return "IGDN" if mod.inverse else "GDN"
    if isinstance(mod, nn.ConvTranspose2d):
        return "deconv"
    if isinstance(mod, nn.Conv2d):
        return "conv"
    return type(mod).__name__


def stage_times(runner: Runner, x, reps: int) -> dict[str, dict[str, float]]:
    """Median wall-clock of every stage of ``g_a``/``h_a``/``h_s``/``g_s`` and of
    ``build_indexes`` in one encode and one decode; ``other`` is the rest
    (entropy coding, CompressAI's glue)."""
    import torch

    net = runner.model.net if runner.varicodec else runner.model
    box: dict[str, float] = {}
    start: dict[str, float] = {}
    hooks = []
    for seq in ("g_a", "h_a", "h_s", "g_s"):
        for i, mod in enumerate(getattr(net, seq)):
            if isinstance(mod, torch.nn.ReLU):
                continue
            name = f"{seq}.{i} {_kind(mod)}"

            def pre(m, a, name=name):
                start[name] = time.perf_counter()

            def post(m, a, out, name=name):
                box[name] = box.get(name, 0.0) + time.perf_counter() - start[name]
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    # on the class: varicodec's index guard shadows the instance's method while coding
    # and calls the class's
    cls = type(net.gaussian_conditional)
    build = cls.__dict__["build_indexes"]

    def timed_build(self, scales):
        t = time.perf_counter()
        out = build(self, scales)
        box["build_indexes"] = box.get("build_indexes", 0.0) + time.perf_counter() - t
        return out

    cls.build_indexes = timed_build
    runs: dict[str, list[dict[str, float]]] = {"encode": [], "decode": []}
    try:
        x = runner.prepare(x)
        for _ in range(reps):
            box.clear()
            c, t = timed(runner.encode, x)
            runs["encode"].append({**box, "total": t})
            box.clear()
            _, t = timed(runner.decode, c)
            runs["decode"].append({**box, "total": t})
    finally:
        cls.build_indexes = build
        for h in hooks:
            h.remove()
    out = {}
    for op, rs in runs.items():
        keys = list(rs[0])
        med = {k: median(r.get(k, 0.0) for r in rs) for k in keys}
        med["other"] = med["total"] - sum(v for k, v in med.items() if k != "total")
        out[op] = med
    return out


# -------------------------------------------------------------------- memory
def _peak_rss_mib() -> float:
    """``VmHWM`` (peak resident set) of this process, MiB. Unlike ``ru_maxrss``
    it starts afresh at ``exec`` and can be reset (:func:`_reset_peak`)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux ≥ 4.0: reset the peak RSS to the current RSS


def memory_probe(spec_path: Path) -> None:
    """Child process: build one configuration, then the peak RSS of one encode
    and of one decode, each from the RSS just before it (printed as JSON)."""
    import torch

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    from compressai.models import ScaleHyperprior

    from varicodec.imageio import load_rgb, to_tensor
    from varicodec.models import create_model

    state = torch.load(spec["state"], weights_only=True)
    if spec["mode"] in MODES:
        model = create_model(spec["name"], **spec["config"]).eval()
    else:
        model = ScaleHyperprior(spec["config"]["N"], spec["config"]["M"]).eval()
    model.load_state_dict(state)
    model.update(force=True)
    runner = Runner(spec["name"], model, spec["mode"], spec["lmbda"])
    runner.setup()
    x = runner.prepare(to_tensor(load_rgb(spec["image"])))
    out = {}
    c = None
    for op in ("encode", "decode"):
        _reset_peak()
        before = _peak_rss_mib()
        if op == "encode":
            c = runner.encode(x)
        else:
            runner.decode(c)
        out[op] = {"rss_before_mib": before, "peak_mib": _peak_rss_mib()}
    print(json.dumps(out))


def measure_memory(runner: Runner, image: Path, threads: int, tmp: Path,
                   env: dict[str, str]) -> dict[str, Any]:
    import torch

    stem = runner.name.replace("/", "_").replace("@", "_")
    state_path = tmp / f"{stem}.pt"
    torch.save(runner.model.state_dict(), state_path)
    model = runner.model
    config = dict(model.config) if runner.varicodec else {"N": model.N, "M": model.M}
    name = model.name if runner.varicodec else "compressai"
    spec = {"name": name, "config": config, "state": str(state_path), "mode": runner.mode,
            "lmbda": runner.lmbda, "image": str(image), "threads": threads}
    spec_path = tmp / f"{stem}.json"
    spec_path.write_text(json.dumps(spec))
    res = subprocess.run([sys.executable, __file__, "--memory-probe", str(spec_path)],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        return {"error": res.stderr[-500:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ reporting
def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    summ = results["summary"]
    if summ:
        lines.append("Speed-up = baseline time / mode time (median over images of per-image "
                     "medians; > 1 is faster). `sp` = sparsity reached (mean over gated "
                     "layers and images; target in the first column).\n")
    for threads, rows in summ.items():
        lines.append(f"**{threads} thread(s)**\n")
        lines.append("| model | target | sp | mode | enc s | dec s | dec vs masked-dense "
                     "| dec vs compressai | dec vs compressai-cl | enc vs compressai "
                     "| dec g_s share | bpp | bytes = dense |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['target']} | {_fmt(r.get('sparsity'))} | {r['mode']} "
                f"| {_fmt(r['encode_s'])} | {_fmt(r['decode_s'])} "
                f"| {_fmt(r.get('dec_vs_masked-dense'))} | {_fmt(r.get('dec_vs_compressai'))} "
                f"| {_fmt(r.get('dec_vs_compressai-cl'))} | {_fmt(r.get('enc_vs_compressai'))} "
                f"| {_fmt(r.get('synthesis_share'))} | {_fmt(r.get('bpp'), 3)} "
                f"| {r.get('bytes_identical', '')} |")
        lines.append("")
    if results.get("flops"):
        lines.append("**FLOPs** (first image, GFLOP; 2 per multiply–add)\n")
        lines.append("| model | target | op | dense | executed | predicted from sparsity "
                     "| reduction | spent on dropped channels |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for key, f in results["flops"].items():
            model, target = key.split("@")
            for op in ("encode", "decode"):
                d = f[op]
                lines.append(f"| {model} | {target} | {op} | {d['dense'] / 1e9:.2f} "
                             f"| {d['executed'] / 1e9:.2f} | {d['predicted'] / 1e9:.2f} "
                             f"| {d['reduction']:.2f}× "
                             f"| {d['spent_on_dropped_channels'] / 1e9:.2f} |")
        lines.append("")
    if results.get("gate_cost"):
        lines.append("**Gate cost** (first image, sparse path)\n")
        lines.append("| model | threads | gates / encode | share | gates / decode | share "
                     "| energy part | per-call overhead |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for key, g in results["gate_cost"].items():
            model, threads = key.split("@")
            lines.append(f"| {model} | {threads} | {g['gates_encode_s'] * 1e3:.1f} ms "
                         f"| {g['share_encode'] * 100:.1f} % | {g['gates_decode_s'] * 1e3:.1f} ms "
                         f"| {g['share_decode'] * 100:.1f} % "
                         f"| {g['energy_share_of_gate_time'] * 100:.0f} % "
                         f"| {g['per_call_overhead_s'] * 1e6:.0f} µs |")
        lines.append("")
    if results.get("memory"):
        lines.append("**Peak memory** (peak RSS of a fresh process, MiB: RSS before → "
                     "peak during one encode / one decode; first image, 1 thread)\n")
        lines.append("| configuration | encode | decode |")
        lines.append("|---|---|---|")
        for key, mem in results["memory"].items():
            cells = []
            for op in ("encode", "decode"):
                m = mem.get(op, {})
                cells.append("error" if "error" in mem or not m else
                             f"{m['rss_before_mib']:.0f} → {m['peak_mib']:.0f}")
            lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
        lines.append("")
    if results.get("stages"):
        lines.append("**Where the time goes** (first image, ms per stage, median of the "
                     "repetitions; `other` = entropy coding and glue)\n")
        cols = list(results["stages"])
        for op in ("encode", "decode"):
            names: list[str] = []
            for col in cols:
                names += [k for k in results["stages"][col][op] if k not in names]
            names = [n for n in names if n not in ("other", "total")] + ["other", "total"]
            lines.append(f"*{op}*\n")
            lines.append("| stage | " + " | ".join(cols) + " |")
            lines.append("|---|" + "---|" * len(cols))
            for n in names:
                cells = [results["stages"][c][op].get(n) for c in cols]
                if all((v or 0) < 5e-4 for v in cells):
                    continue
                lines.append(f"| {n} | " + " | ".join(
                    "–" if v is None else f"{v * 1e3:.0f}" for v in cells) + " |")
            lines.append("")
    env = results["environment"]
    lines.append(f"Load average before / after: {env['loadavg_before']} / "
                 f"{env['loadavg_after']}; OMP_WAIT_POLICY={env['omp_wait_policy']}; "
                 f"command: `{env['command']}`")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def load_images(args) -> tuple[list[Path], list]:
    """The Kodak files of the run and their ``1×3×H×W`` tensors."""
    from varicodec.imageio import load_rgb, to_tensor

    images = sorted(args.data.glob("*.png"))
    if args.limit:
        images = images[:args.limit]
    return images, [to_tensor(load_rgb(p)) for p in images]


def calibrate(models: dict, targets: list[str], x0, lmbda: float) -> dict[tuple[str, str], dict]:
    """α of every gate per (variant, target), calibrated on the first image
    (``"trained"``: the model's own α)."""
    import torch

    from varicodec.layers import calibrate_alpha

    alphas: dict[tuple[str, str], dict] = {}
    for v, m in models.items():
        lm = lmbda if m.variable_rate else None
        for t in targets:
            if t != "trained":
                run = (lambda m=m, lm=lm: m(x0, lm)) if m.variable_rate else (lambda m=m: m(x0))
                with torch.no_grad():
                    calibrate_alpha(m, run, float(t))
            alphas[v, t] = alpha_state(m)
    return alphas


def make_runners(models: dict, base, targets: list[str], layouts_at: list[str],
                 lmbda: float) -> list[tuple[str, str, Runner]]:
    """``(variant, target, runner)`` for every mode to time, the baselines last."""
    runners: list[tuple[str, str, Runner]] = []
    for v, m in models.items():
        lm = lmbda if m.variable_rate else None
        for t in targets:
            for mode in MODES:
                if mode in ("sparse-cl", "sparse-nchw") and t not in layouts_at:
                    continue
                runners.append((v, t, Runner(f"{v}@{t}/{mode}", m, mode, lm)))
    for mode in BASELINES:
        runners.append(("compressai", "-", Runner(mode, base, mode, None)))
    return runners


def time_one(r: Runner, x) -> tuple[dict, float, float, float, dict]:
    """Encode and decode ``x`` once: ``(compressed, encode s, decode s, synthesis s,
    sparsity per layer of encoder and decoder)``."""
    xin = r.prepare(x)
    box, hooks = synthesis_timer(r.model.net if r.varicodec else r.model)
    try:
        c, te = timed(r.encode, xin)
        sparsity = r.model.sparsity() if r.varicodec else {}
        _, td = timed(r.decode, c)
    finally:
        for h in hooks:
            h.remove()
    if r.varicodec:
        sparsity = {**sparsity, **r.model.sparsity()}
    return c, te, td, box["gs_s"], sparsity


def time_image(name: str, x, pixels: int, runners, activate, thread_counts: list[int],
               reps: int) -> dict[str, Any]:
    """One image: every runner at every thread count, ``reps`` interleaved repetitions.
    Per configuration: size, sparsity and the median times (all times kept)."""
    import numpy as np
    import torch

    entry: dict[str, Any] = {"image": name, "configs": {}}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        times: dict[str, dict[str, list[float]]] = {}
        for rep in range(reps):
            for v, t, r in runners:
                activate(v, t, r)
                c, te, td, gs, sp = time_one(r, x)
                rec = times.setdefault(r.name, {"enc": [], "dec": [], "gs": []})
                rec["enc"].append(te)
                rec["dec"].append(td)
                rec["gs"].append(gs)
                if rep == 0:
                    entry["configs"][f"{r.name}@{threads}"] = {
                        "bytes": n_bytes(c), "bpp": n_bytes(c) * 8 / pixels,
                        "strings_sha": hashlib.sha256(
                            b"|".join(s[0] for s in c["strings"])).hexdigest(),
                        "sparsity": sp,
                        "sparsity_mean": float(np.mean(list(sp.values()))) if sp else None,
                    }
            print(f"[{name} threads={threads} rep {rep + 1}/{reps}] "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        for rname, rec in times.items():
            e = entry["configs"][f"{rname}@{threads}"]
            e.update(encode_s=median(rec["enc"]), decode_s=median(rec["dec"]),
                     synthesis_s=median(rec["gs"]), encode_all_s=rec["enc"],
                     decode_all_s=rec["dec"])
    return entry


def summary_row(v: str, t: str, r: Runner, threads: int, cfgs: list[dict]) -> dict[str, Any]:
    """One configuration over the images: medians, and ratios against masked-dense
    (same model and gates) and the CompressAI baselines (> 1: this one is faster)."""
    import numpy as np

    key = f"{r.name}@{threads}"
    row: dict[str, Any] = {"model": v if r.varicodec else r.mode, "target": t, "mode": r.mode}
    row["encode_s"] = median(c[key]["encode_s"] for c in cfgs)
    row["decode_s"] = median(c[key]["decode_s"] for c in cfgs)
    row["bpp"] = median(c[key]["bpp"] for c in cfgs)
    row["synthesis_share"] = median(c[key]["synthesis_s"] / c[key]["decode_s"] for c in cfgs)
    if r.varicodec:
        row["sparsity"] = float(np.mean([c[key]["sparsity_mean"] for c in cfgs]))
        dense_key = f"{v}@{t}/masked-dense@{threads}"
        row["dec_vs_masked-dense"] = median(
            c[dense_key]["decode_s"] / c[key]["decode_s"] for c in cfgs)
        row["enc_vs_masked-dense"] = median(
            c[dense_key]["encode_s"] / c[key]["encode_s"] for c in cfgs)
        row["bytes_identical"] = all(
            c[key]["strings_sha"] == c[dense_key]["strings_sha"] for c in cfgs)
    for b in BASELINES:
        bkey = f"{b}@{threads}"
        row[f"dec_vs_{b}"] = median(c[bkey]["decode_s"] / c[key]["decode_s"] for c in cfgs)
        row[f"enc_vs_{b}"] = median(c[bkey]["encode_s"] / c[key]["encode_s"] for c in cfgs)
    return row


def summarize_timings(per_image: list[dict], runners, thread_counts: list[int]) -> dict:
    """Thread count → one :func:`summary_row` per runner; drops the byte hashes after use."""
    summary: dict[str, list[dict[str, Any]]] = {}
    cfgs = [e["configs"] for e in per_image]
    for threads in thread_counts if per_image else []:
        summary[str(threads)] = [summary_row(v, t, r, threads, cfgs) for v, t, r in runners]
    for c in cfgs:
        for config in c.values():
            config.pop("strings_sha", None)
    return summary


def side_measurements(args, parts: set[str], runners, activate, images: list[Path], x0,
                      targets: list[str], thread_counts: list[int]) -> dict[str, dict]:
    """FLOPs (sparse mode, every target), gate cost and per-stage times (the main
    target), peak memory (subprocesses) — on the first image."""
    import torch

    torch.set_num_threads(1)
    out: dict[str, dict] = {"flops": {}, "gate_cost": {}, "memory": {}, "stages": {}}
    main_target = "0.5" if "0.5" in targets else targets[0]
    for v, t, r in runners:
        if r.mode != "sparse" or "flops" not in parts:
            continue
        activate(v, t, r)
        c = r.encode(x0)
        out["flops"][f"{v}@{t}"] = flops_report(r.model, r, x0, c)
    for threads in thread_counts if "gates" in parts else []:
        torch.set_num_threads(threads)
        for v, t, r in runners:
            if r.mode == "sparse" and t == main_target:
                activate(v, t, r)
                c = r.encode(x0)
                out["gate_cost"][f"{v}@{threads}"] = gate_cost(r.model, r, x0, c, args.reps)
    for threads in thread_counts if "stages" in parts else []:
        torch.set_num_threads(threads)
        for v, t, r in runners:
            if r.mode in ("sparse", "masked-dense", "compressai") and t in (main_target, "-"):
                activate(v, t, r)
                out["stages"][f"{r.name}@{threads}"] = stage_times(r, x0, args.reps)
    if "memory" in parts:
        env = dict(os.environ)
        memory_at = targets if args.memory_at == "all" else args.memory_at.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            for v, t, r in runners:
                if r.varicodec and t not in memory_at:
                    continue
                activate(v, t, r)
                out["memory"][r.name] = measure_memory(r, images[0], 1, Path(tmp), env)
                print(f"[memory {r.name}] {out['memory'][r.name]}", flush=True)
    return out


def run_environment(load_before) -> dict[str, Any]:
    import torch

    try:
        from varicodec.eval.results import environment

        info = environment()
    except Exception as exc:  # noqa: BLE001 - environment details are a nicety
        info = {"error": repr(exc)}
    return {
        **info,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.omp_wait_policy != "unset":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    if args.memory_probe is not None:
        memory_probe(args.memory_probe)
        return 0
    if not args.data.is_dir() or not sorted(args.data.glob("*.png")):
        print(f"sparse_speed: Kodak images not found at {args.data} (see "
              "../shared/data/README.md): nothing measured", file=sys.stderr)
        return 1
    if args.weights is not None and not args.weights.is_file():
        sys.exit(f"--weights: no such file {args.weights}")
    load_before = os.getloadavg()

    import torch

    images, xs = load_images(args)
    x0 = xs[0]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    thread_counts = [int(t) for t in args.threads.split(",")]
    default_sp = "trained" if args.weights is not None else "0.3,0.5,0.6,0.7"
    targets = [t.strip() for t in (args.sparsity or default_sp).split(",")]
    layouts_at = (targets if args.layouts_at == "all"
                  else [t.strip() for t in args.layouts_at.split(",")])

    torch.set_num_threads(max(thread_counts))
    models, base = build_models(args, variants, x0)
    variants = list(models)  # with --weights: the loaded model's variant
    alphas = calibrate(models, targets, x0, args.lmbda)
    runners = make_runners(models, base, targets, layouts_at, args.lmbda)

    def activate(v: str, t: str, r: Runner) -> None:
        if r.varicodec:
            load_alpha(r.model, alphas[v, t])
        r.setup()

    parts = {p.strip() for p in args.parts.split(",")}
    if args.no_memory:
        parts.discard("memory")
    per_image = [time_image(path.name, x, x.shape[2] * x.shape[3], runners, activate,
                            thread_counts, args.reps)
                 for path, x in zip(images, xs, strict=True)] if "timing" in parts else []
    summary = summarize_timings(per_image, runners, thread_counts)
    side = side_measurements(args, parts, runners, activate, images, x0, targets,
                             thread_counts)
    first = next(iter(models.values()))
    results = {
        "benchmark": "sparse_speed",
        "environment": run_environment(load_before),
        "setup": {"images": [p.name for p in images], "variants": variants, "targets": targets,
                  "threads": thread_counts, "reps": args.reps, "lmbda": args.lmbda,
                  "weights": str(args.weights) if args.weights else None,
                  "N": first.config["N"], "M": first.config["M"],
                  "standin": None if args.weights else {"y_std": Y_STD, "z_std": Z_STD}},
        "summary": summary,
        **side,
        "per_image": per_image,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=float))
    md = markdown(results)
    if args.markdown is not None:
        args.markdown.write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
