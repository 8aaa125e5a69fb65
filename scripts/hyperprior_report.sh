#!/usr/bin/env bash
# Tables and figures of docs/results/hyperprior.md from the results files in
# docs/results/hyperprior/ (written by the `varicodec eval` commands listed there).
set -euo pipefail
cd "$(dirname "$0")/.."
VARICODEC=${VARICODEC:-varicodec}
R=docs/results/hyperprior
C=docs/results/classical
# the paper's table: ecg (and bm, ecgbm) against the 8 dense base models, λ by λ
"$VARICODEC" table $R/base.json $R/ecg.json $R/bm.json $R/ecgbm.json \
    $C/jpeg.json --reference hyperprior --matrix -o $R/table-main.md
"$VARICODEC" table $R/base.json $R/ecgbm-flops.json $R/ecgbm.json --matrix -o $R/table-flops.md
# the fair baseline: ecg against base models given the same extra steps without gates
"$VARICODEC" table $R/base-extra.json $R/ecg.json $R/ecgbm.json -o $R/table-extra.md
# continuity of the variable-rate models (32-λ sweeps)
"$VARICODEC" table $R/ecgbm-sweep.json $R/bm-sweep.json -o $R/table-sweep.md
# regulariser / surrogate ablation at q4
"$VARICODEC" table $R/ecg.json $R/ablation-alpha-q4.json $R/ablation-tau-q4.json \
    $R/ablation-flops-q4.json --points -o $R/table-ablation.md
# against the bundled default model trained before this grid
"$VARICODEC" table $R/ecgbm.json docs/results/hyperprior-ecgbm-cpu.json --matrix \
    -o $R/table-default.md
"$VARICODEC" plot $R/base.json $R/ecg.json $R/bm.json $R/ecgbm.json \
    $C/jpeg.json $C/webp.json $C/avif.json $C/jpeg2000.json $C/jpegxl.json \
    --reference hyperprior --title "ScaleHyperprior N=128/M=192 on Kodak (CPU-trained grid)" \
    -o $R/rd.png
"$VARICODEC" plot $R/base.json $R/ecg.json $R/bm.json $R/ecgbm.json --max-bpp 1.6 \
    --title "The grid alone" -o $R/rd-grid.png
"$VARICODEC" plot $R/ecgbm-sweep.json $R/bm-sweep.json \
    --title "32-λ sweeps (first 6 Kodak images)" -o $R/sweep.png
