#!/usr/bin/env bash
# Hand-picked mutants that the tests must kill (issue 18; docs/results/mutation.md).
#
#   bash scripts/mutants.sh            # all of them (about a minute on an idle machine)
#   bash scripts/mutants.sh NAME...    # some, by name
#   TESTS_REF=a852c93 bash scripts/mutants.sh   # the same mutants against the tests/ of an
#                                  # older commit (their tests of then; reports, never fails)
#
# Each mutant is one exact text replacement in one file of a temporary copy of src/,
# tests/ and benchmarks/ (never the working tree). The copy is imported through
# PYTHONPATH (checked), the mutant's targeted tests run, and they must fail (pytest exit
# code 1). First the same tests run on the unmutated copy and must pass. The script
# fails if a mutant survives, if its text is no longer in the file (the code moved on:
# update the mutant here), or if the control run fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
TMP=$(mktemp -d -t varicodec-mutants.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cp -r "$ROOT/src" "$ROOT/tests" "$ROOT/benchmarks" "$ROOT/pyproject.toml" "$TMP/"
if [ -n "${TESTS_REF:-}" ]; then
    rm -rf "$TMP/tests" && git -C "$ROOT" archive "$TESTS_REF" tests | tar -x -C "$TMP"
fi
find "$TMP" -name __pycache__ -prune -exec rm -rf {} +
cd "$TMP"
export PYTHONPATH="$TMP/src" OMP_NUM_THREADS=1 VARICODEC_TEST_THREADS=1
"$PY" - "$@" <<'PY'
import os, subprocess, sys, time
from pathlib import Path

# name → (file, text, replacement, targeted tests)
MUTANTS = {
    "zeroed-encoder": (
        "src/varicodec/models/codec_model.py",
        "out = self._coder(order).compress(x)",
        "out = self._coder(order).compress(torch.zeros_like(x))",
        ["tests/test_models.py::test_coding_matches_forward[hyperprior-ecgbm]",
         "tests/test_content.py::test_bundled_model_codes_the_photo"]),
    "side-masks-ignored": (
        "src/varicodec/models/codec_model.py",
        "g.forced_mask = masks[:, start:start + g.channels]",
        "g.forced_mask = None",
        ["tests/test_gate.py::test_unstable_hyper_gates_are_sent"]),
    "side-masks-never-sent": (
        "src/varicodec/models/codec_model.py",
        "if not any(g.unstable for g in gates):",
        "if True:",
        ["tests/test_gate.py::test_unstable_hyper_gates_are_sent"]),
    "missing-keys-dropped": (
        "src/varicodec/models/codec_model.py",
        'missing = [f"net.{k}" for k in r.missing_keys]',
        "missing = []",
        ["tests/test_gate.py::test_dense_checkpoint_loads_into_gated_model"]),
    "demodulator-dropped": (
        "src/varicodec/models/codec_model.py",
        "return (y_hat * self.demodulator(self._lmbda)[:, :, None, None].to(y_hat.dtype),)",
        "return (y_hat,)",
        ["tests/test_modulator.py::test_decoder_applies_encoders_lambda"]),
    "psnr-search-backwards": (
        "src/varicodec/codec/rate_control.py",
        'math.log(max(value, 1e-12) / target) if kind == "bpp" else value - target',
        'math.log(max(value, 1e-12) / target) if kind == "bpp" else target - value',
        ["tests/test_codec_rate_control.py::test_real_psnr_target_searches"]),
    "psnr-of-another-image": (
        "src/varicodec/codec/api.py",
        "return psnr_db(np.asarray(out), self.src.pixels())",
        "return psnr_db(np.asarray(out)[::-1], self.src.pixels())",
        ["tests/test_codec_api.py::test_encode_result_and_info"]),
    "nan-made-zero": (
        "src/varicodec/codec/api.py",
        "    if bad:  # never a silent 0",
        "    if False:  # never a silent 0",
        ["tests/test_codec_cli.py::test_nan_in_the_decoded_image_is_an_error_naming_the_file"]),
    "eval-fingerprint-constant": (
        "src/varicodec/eval/runner.py",
        "fingerprint = weights_fingerprint(model).hex()",
        'fingerprint = "0" * 16',
        ["tests/test_eval.py::test_evaluate_variable_rate_gated",
         "tests/test_eval.py::test_evaluate_fixed_set"]),
    "eval-untrained-silent": (
        "src/varicodec/eval/cli.py",
        "if not models.trained and not args.untrained:",
        "if False:",
        ["tests/test_eval.py::test_cli_eval_untrained_needs_the_flag"]),
    "benchmark-without-data-succeeds": (
        "benchmarks/rate_control.py",
        'nothing measured", file=sys.stderr)\n        return 1',
        'nothing measured", file=sys.stderr)\n        return 0',
        ["tests/test_benchmarks.py::test_missing_data_is_not_a_success"]),
}

# the tests that covered each mutant's code before issue 18 (commit a852c93), for TESTS_REF
BEFORE = {
    # (not test_joint_coding_matches_encoder: its spy on CompressAI's loop sees nothing
    # since the wavefront coder became the default, so it fails whatever the encoder does)
    "zeroed-encoder": ["tests/test_models.py::test_coding_matches_forward",
                       "tests/test_models.py::test_save_load_roundtrip",
                       "tests/test_threads.py", "tests/test_gate.py", "tests/test_modulator.py",
                       "tests/test_codec_api.py"],
    "side-masks-ignored": ["tests/test_gate.py::test_unstable_hyper_gates_are_sent"],
    "side-masks-never-sent": ["tests/test_gate.py::test_unstable_hyper_gates_are_sent"],
    "missing-keys-dropped": ["tests/test_gate.py::test_dense_checkpoint_loads_into_gated_model"],
    "demodulator-dropped": ["tests/test_modulator.py::test_decoder_applies_encoders_lambda"],
    "psnr-search-backwards": ["tests/test_codec_rate_control.py::test_real_psnr_target_runs"],
    "psnr-of-another-image": ["tests/test_codec_api.py::test_encode_result_and_info"],
    "eval-fingerprint-constant": ["tests/test_eval.py::test_evaluate_variable_rate_gated",
                                  "tests/test_eval.py::test_evaluate_fixed_set"],
    "benchmark-without-data-succeeds": ["tests/test_codec_rate_control.py::test_benchmark_script"],
}
old = bool(os.environ.get("TESTS_REF"))
if old:
    MUTANTS = {n: (*m[:3], BEFORE.get(n, [])) for n, m in MUTANTS.items()}
chosen = sys.argv[1:] or list(MUTANTS)
unknown = [n for n in chosen if n not in MUTANTS]
if unknown:
    sys.exit(f"mutants.sh: unknown mutant(s) {unknown}; known: {', '.join(MUTANTS)}")

probe = subprocess.run([sys.executable, "-c", "import varicodec; print(varicodec.__file__)"],
                       capture_output=True, text=True)
if not probe.stdout.startswith(os.environ["PYTHONPATH"]):
    sys.exit(f"mutants.sh: varicodec imports from {probe.stdout.strip()!r}, not the copy")


def pytest(tests):
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        *tests], capture_output=True, text=True, timeout=600)
    lines = p.stdout.strip().splitlines()
    failed = [ln.split(" - ")[0].removeprefix("FAILED ") for ln in lines
              if ln.startswith("FAILED ")]
    return p.returncode, time.perf_counter() - t, lines[-1:] + failed[:1]


tests = sorted({t for n in chosen for t in MUTANTS[n][3]})
rc, secs, last = pytest(tests)
if old:
    print(f"control ({os.environ['TESTS_REF']}'s tests): exit {rc} {last}")
elif rc != 0:
    sys.exit(f"mutants.sh: the targeted tests fail without a mutant ({last}); fix them first")
else:
    print(f"control: {len(tests)} targeted tests pass unmutated ({secs:.1f} s)")
survivors = []
for name in chosen:
    path, text, repl, targets = MUTANTS[name]
    if not targets:
        print(f"{name:34s} no test covered it then")
        survivors.append(name)
        continue
    f = Path(path)
    source = f.read_text()
    if source.count(text) != 1:
        sys.exit(f"mutants.sh: {name}: its text occurs {source.count(text)} times in {path}, "
                 "not once (the code changed: update the mutant)")
    f.write_text(source.replace(text, repl))
    try:
        rc, secs, last = pytest(targets)
    finally:
        f.write_text(source)
    verdict = "killed" if rc == 1 else "SURVIVED" if rc == 0 else f"ERROR (pytest exit {rc})"
    print(f"{name:34s} {verdict:10s} {secs:5.1f} s  {' '.join(last)}")
    if rc != 1:
        survivors.append(name)
if survivors and old:
    print(f"with {os.environ['TESTS_REF']}'s tests, not killed: {', '.join(survivors)}")
elif survivors:
    sys.exit(f"mutants.sh: not killed: {', '.join(survivors)}")
else:
    print(f"all {len(chosen)} mutants killed")
PY
