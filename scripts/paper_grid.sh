#!/usr/bin/env bash
# Train (or continue) the paper's grid for one architecture and export every model to
# checkpoints/paper/ (configs/paper/README.md). Resumable: finished runs are skipped,
# interrupted ones continue from their checkpoint. Usage:
#   [ARCH=hyperprior|hyperprior-paper|hyperprior-128|mean|mean-128|joint|joint-128] bash scripts/paper_grid.sh [STAGE...]
#   stages: pre bm base ecg extra ecgbm (hyperprior also: ablation); and, not among the
#   defaults, eval: Kodak evaluations of the base, ecg and base-extra sets of QUALITIES
#   into docs/results/paper/{arch}-{set}-q{first}-{last}.json and the ECG-vs-base-extra
#   table {arch}-ecg-vs-extra-q{first}-{last}.md (issue 12's grids; KODAK= the image folder)
# ARCH=hyperprior (the default) is issue 7's grid, N=128/M=192 throughout, unchanged; its
# default stages are bm base ecg extra ecgbm ablation, and `pre` trains its shared
# pre-training configs/hyperprior-bm-cpu.yaml. ARCH=mean, ARCH=joint and ARCH=hyperprior-paper
# (ScaleHyperprior again) are issue 12's grids at CompressAI's per-quality widths and the
# universal N=192/M=320; their default stages are pre bm base ecg extra ecgbm. ARCH=hyperprior-128
# and ARCH=mean-128 are the smaller grid the CPU affords: the N=128/M=192 lineage of hyperprior-paper
# (q1-q5) and mean (q1-q4), folded from a universal model of that width, continued to q6-q8 and
# q5-q8 (their default QUALITIES), stages base ecg extra. ARCH=joint-128 is the joint model's
# N=128/M=192 lineage at every quality (q1-q8 by default; CompressAI's joint is never that
# narrow), folded from checkpoints/paper/joint-bm-128-cpu, stages base ecg extra. Environment:
#   TRAIN_ARGS  extra arguments for every `varicodec train` (word-split), e.g. on a GPU
#               TRAIN_ARGS="--set batch_size=32 --set crop=256 --set workers=14"
#   DRY_RUN=1   print "CONFIG -> EXPORT" for each model of the stages, train nothing
#               (followed by the extra train arguments of that model, if any)
#   GAMMA       the ecg stage's sparsity weight γ instead of the configs' 20: a number, or
#               "schedule" for γ_q = 90 · (λ_q/λ_1)^0.26 (90 … 298 at q1 … q8), which holds
#               sparsity at 0.47-0.50 at every quality (docs/results/paper.md, section 2,
#               "A schedule for sparsity 0.5"; configs/paper/ablation-gammahalf-ecg-q*.yaml);
#               use another OUT, as the exports keep their names
#   QUALITIES   the qualities of the per-quality stages (default "1 2 3 4 5 6 7 8")
set -euo pipefail
cd "$(dirname "$0")/.."
VARICODEC=${VARICODEC:-varicodec}
OUT=${OUT:-checkpoints/paper}
ARCH=${ARCH:-hyperprior}
read -r -a train_args <<<"${TRAIN_ARGS:-}"

run() {  # run CONFIG EXPORT_NAME [TRAIN ARGS…]   (CONFIG relative to configs/, without .yaml)
  local cfg=configs/$1.yaml export=$2 name
  shift 2
  if [[ -n ${DRY_RUN:-} ]]; then echo "$cfg -> $OUT/$export.safetensors${*:+  $*}"; return; fi
  mkdir -p "$OUT" runs
  name=$(sed -n 's/^name: *//p' "$cfg")
  if [[ -f "$OUT/$export.safetensors" ]]; then echo "done: $OUT/$export.safetensors"; return; fi
  local resume=()
  [[ -f runs/$name/checkpoint.safetensors ]] && resume=(--resume)
  "$VARICODEC" train --config "$cfg" "${resume[@]}" "${train_args[@]}" "$@" 2>>"runs/$name.log"
  "$VARICODEC" export "runs/$name" --out "$OUT/$export.safetensors"
}

# γ_q = 90 · (λ_q/λ_1)^0.26, rounded, for q = 1 … 8 (the ablation-gammahalf-ecg-q* configs)
GAMMA_SCHEDULE=(90 107 127 150 178 212 251 298)
case ${GAMMA:-} in
  "" | schedule) ;;
  *) [[ $GAMMA =~ ^[0-9]+([.][0-9]+)?$ ]] || {
       echo "GAMMA must be a number or 'schedule', not '$GAMMA'" >&2; exit 2; } ;;
esac
gamma_args() {  # the ecg stage's extra train arguments at quality $1 (GAMMA, above)
  case ${GAMMA:-} in
    "") ;;
    schedule) echo "--set gamma=${GAMMA_SCHEDULE[$1 - 1]}" ;;
    *) echo "--set gamma=$GAMMA" ;;
  esac
}

all_qualities="1 2 3 4 5 6 7 8"
case $ARCH in hyperprior-128) all_qualities="6 7 8" ;; mean-128) all_qualities="5 6 7 8" ;; esac
read -r -a QS <<<"${QUALITIES:-$all_qualities}"

run_or_print() {  # run a command, or under DRY_RUN print it (shell-quoted)
  if [[ -n ${DRY_RUN:-} ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

evaluate() {  # the Kodak evaluations and the table of the fixed-rate sets of QS
  local results=${RESULTS:-docs/results/paper} span="q${QS[0]}-${QS[-1]}" ref=${ARCH%-*}
  local v q files label=$ref
  # hyperprior-128 / mean-128 are merged with the small-width set of their architecture
  # into one curve per set; joint-128 is a lineage of its own, so its legend names it
  [[ $ARCH == joint-128 ]] && label=$ARCH
  [[ $ARCH == hyperprior ]] && { echo "eval: issue 7's grid is evaluated as in hyperprior.md" >&2; exit 2; }
  for v in base ecg base-extra; do
    files=()
    for q in "${QS[@]}"; do files+=("$OUT/$ARCH-$v-q$q.safetensors"); done
    run_or_print "$VARICODEC" eval --model "${files[@]}" "${KODAK:-../shared/data/kodak}" \
      -o "$results/$ARCH-$v-$span.json" --label "$label $v" --threads 2 --force
  done
  run_or_print "$VARICODEC" table "$results/$ARCH-base-extra-$span.json" \
    "$results/$ARCH-ecg-$span.json" --reference "$ref" -o "$results/$ARCH-ecg-vs-extra-$span.md"
}
case $ARCH in
  hyperprior) defaults=(bm base ecg extra ecgbm ablation) ;;
  # the N=128/M=192 fixed-rate models start from the strongest universal model of that width
  # (their base configs' init), so only N=192/M=320 is pre-trained here
  mean | hyperprior-paper) defaults=(pre bm base ecg extra ecgbm); widths=(192x320) ;;
  joint) defaults=(pre bm base ecg extra ecgbm); widths=(192x192 192x320) ;;
  hyperprior-128 | mean-128 | joint-128) defaults=(base ecg extra) ;;
  *) echo "unknown ARCH $ARCH (hyperprior hyperprior-paper hyperprior-128 mean mean-128 joint joint-128)" >&2
     exit 2 ;;
esac

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=("${defaults[@]}")
for stage in "${stages[@]}"; do
  case $ARCH:$stage in
    hyperprior:pre) run hyperprior-bm-cpu hyperprior-bm-cpu ;;
    hyperprior:ablation) for a in alpha tau flops; do run paper/ablation-$a-q4 ablation-$a-q4; done ;;
    hyperprior:ecgbm)
      run paper/hyperprior-ecgbm hyperprior-ecgbm; run paper/hyperprior-ecgbm-flops hyperprior-ecgbm-flops ;;
    *:pre) for w in "${widths[@]}"; do run "paper/$ARCH-pre-$w" "$ARCH-pre-$w"; done ;;
    *:bm) run "paper/$ARCH-bm" "$ARCH-bm" ;;
    *:base) for q in "${QS[@]}"; do run "paper/$ARCH-base-q$q" "$ARCH-base-q$q"; done ;;
    *:ecg) for q in "${QS[@]}"; do
             read -r -a g <<<"$(gamma_args "$q")"
             run "paper/$ARCH-ecg-q$q" "$ARCH-ecg-q$q" "${g[@]}"
           done ;;
    *:extra) for q in "${QS[@]}"; do run "paper/$ARCH-base-q$q-extra" "$ARCH-base-extra-q$q"; done ;;
    *:ecgbm) run "paper/$ARCH-ecgbm" "$ARCH-ecgbm" ;;
    *:eval) evaluate ;;
    *) echo "unknown stage $stage for $ARCH (${defaults[*]})" >&2; exit 2 ;;
  esac
done
