#!/usr/bin/env bash
# Train (or continue) the whole ScaleHyperprior grid of issue 7 and export every model to
# checkpoints/paper/ (configs/paper/README.md). Resumable: finished runs are skipped,
# interrupted ones continue from their checkpoint. Usage:
#   bash scripts/paper_grid.sh [STAGE...]     stages: bm base ecg extra ecgbm ablation
set -euo pipefail
cd "$(dirname "$0")/.."
VARICODEC=${VARICODEC:-varicodec}
OUT=${OUT:-checkpoints/paper}
mkdir -p "$OUT" runs

run() {  # run CONFIG EXPORT_NAME
  local cfg=configs/paper/$1.yaml name
  name=$(sed -n 's/^name: *//p' "$cfg")
  if [[ -f "$OUT/$2.safetensors" ]]; then echo "done: $OUT/$2.safetensors"; return; fi
  local resume=()
  [[ -f runs/$name/checkpoint.safetensors ]] && resume=(--resume)
  "$VARICODEC" train --config "$cfg" "${resume[@]}" 2>>"runs/$name.log"
  "$VARICODEC" export "runs/$name" --out "$OUT/$2.safetensors"
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(bm base ecg extra ecgbm ablation)
for stage in "${stages[@]}"; do
  case $stage in
    bm) run hyperprior-bm hyperprior-bm ;;
    base) for q in 1 2 3 4 5 6 7 8; do run hyperprior-base-q$q hyperprior-base-q$q; done ;;
    ecg) for q in 1 2 3 4 5 6 7 8; do run hyperprior-ecg-q$q hyperprior-ecg-q$q; done ;;
    extra) for q in 1 2 3 4 5 6 7 8; do run hyperprior-base-q$q-extra hyperprior-base-extra-q$q; done ;;
    ecgbm) run hyperprior-ecgbm hyperprior-ecgbm; run hyperprior-ecgbm-flops hyperprior-ecgbm-flops ;;
    ablation) for a in alpha tau flops; do run ablation-$a-q4 ablation-$a-q4; done ;;
    *) echo "unknown stage $stage (bm base ecg extra ecgbm ablation)" >&2; exit 2 ;;
  esac
done
