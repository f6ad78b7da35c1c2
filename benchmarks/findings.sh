#!/usr/bin/env bash
# The findings suite: every research experiment of README's "Research suite" and
# `kimi-lab bench eval`, one after another, on one quiet machine (nothing else running).
#
#   benchmarks/findings.sh [OUT]        # OUT: runs/findings/<time>; DRY_RUN=1 prints the commands
#   ONLY="sparsity heads" benchmarks/findings.sh   # a subset (names: the step names below)
#   EXTRA="trainer.max_steps=4 ..." ONLY=qk_clip benchmarks/findings.sh   # overrides for every sweep
#
# Sweeps run as two one-thread lanes side by side (seed 0 | seed 1, or two arms), which
# keeps both cores busy (a 2-core machine; each run is too small for two threads to pay),
# then `kimi-lab report FIRST --also SECOND` joins the lanes' folders into one report.
# Expected times on a quiet 2-core AMD EPYC with AVX512-BF16 (estimates from CPU-seconds
# measured on a shared machine; the figures README quotes are the ones this script logs):
#   data ~6 min | sparsity ~30 | qk_clip ~6 | heads ~7 (+ ~13 for the longer pair) |
#   fusion ~8 | vit3d ~13 | zero_vision ~60 | parl_ablation: see README | bench_eval ~6
# Each step's wall time and the load average before and after it go to OUT/times.tsv,
# its output to OUT/<step>.log; the reports stay in the run folders named there.
set -euo pipefail

OUT=${1:-runs/findings/$(date +%Y-%m-%d_%H-%M-%S)}
RUNS=$OUT/runs
mkdir -p "$RUNS"
TIMES=$OUT/times.tsv
DRY_RUN=${DRY_RUN:-0}
ONLY=${ONLY:-}

{
    echo "# $(date -Is) $(uname -r)"
    echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
        "avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)," \
        "amx: $(grep -qw amx_tile /proc/cpuinfo && echo yes || echo no)"
    echo "# torch $(python -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')"
    printf "step\tseconds\tload_before\tload_after\n"
} >>"$TIMES"

wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

# step NAME CMD...: one command, timed, logged to OUT/NAME.log
step() {
    local name=$1
    shift
    wanted "$name" || return 0
    echo "[findings] $name: $*"
    [ "$DRY_RUN" = 1 ] && return 0
    local load t0
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    t0=$(date +%s)
    "$@" >"$OUT/$name.log" 2>&1
    printf "%s\t%s\t%s\t%s\n" "$name" $(($(date +%s) - t0)) "$load" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$TIMES"
}

# lanes NAME "CMD1" "CMD2" [REPORT_CMD]: two commands side by side, one thread each, then the report
lanes() {
    local name=$1 first=$2 second=$3 report=${4:-}
    wanted "$name" || return 0
    echo "[findings] $name: lane 1: $first"
    echo "[findings] $name: lane 2: $second"
    [ -n "$report" ] && echo "[findings] $name: then: $report"
    [ "$DRY_RUN" = 1 ] && return 0
    local load t0 p1 p2
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    t0=$(date +%s)
    OMP_NUM_THREADS=1 bash -c "$first" >"$OUT/$name.1.log" 2>&1 &
    p1=$!
    OMP_NUM_THREADS=1 bash -c "$second" >"$OUT/$name.2.log" 2>&1 &
    p2=$!
    local failed=0
    wait "$p1" || failed=1
    wait "$p2" || failed=1  # both lanes end before the suite stops: each keeps what it finished
    if [ "$failed" = 1 ]; then
        echo "[findings] $name failed: see $OUT/$name.1.log and $OUT/$name.2.log" >&2
        exit 1
    fi
    [ -n "$report" ] && bash -c "$report" >>"$OUT/$name.1.log" 2>&1
    printf "%s\t%s\t%s\t%s\n" "$name" $(($(date +%s) - t0)) "$load" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$TIMES"
}

# built KIND DIR: the shards are there (a manifest), else build them
built() { [ -f "$2/manifest.json" ] || kimi-lab data build "$1" --out "$2"; }

ONE="trainer.num_threads=1 ${EXTRA:-}"
SWEEP=$RUNS  # hydra.sweep.dir of each lane below

# 0. Shards the multiruns read (zero_vision and parl_ablation build their own under OUT).
#    The motion clips are always rebuilt: their captions must mark the motion words (video/2).
step data bash -c "$(declare -f built); built text data/text && built image-code data/image_code \
    && built video data/video && built interleaved data/interleaved \
    && kimi-lab data build video --n 2000 --out data/video-motion"

# 1. K2's sparsity law: 8 / 16 / 32 / 64 routed experts, seed 0 | seed 1.
lanes sparsity \
    "kimi-lab train --multirun experiment=sparsity_scaling seed=0 $ONE hydra.sweep.dir=$SWEEP/sparsity/seed0" \
    "kimi-lab train --multirun experiment=sparsity_scaling seed=1 $ONE hydra.sweep.dir=$SWEEP/sparsity/seed1" \
    "kimi-lab report $SWEEP/sparsity/seed0 --also $SWEEP/sparsity/seed1"

# 2. MuonClip: AdamW and Muon | MuonClip (one seed).
lanes qk_clip \
    "kimi-lab train --multirun experiment=qk_clip phase.optim.name=adamw,muon $ONE hydra.sweep.dir=$SWEEP/qk_clip/a" \
    "kimi-lab train --multirun experiment=qk_clip phase.optim.name=muonclip $ONE hydra.sweep.dir=$SWEEP/qk_clip/b" \
    "kimi-lab report $SWEEP/qk_clip/a --also $SWEEP/qk_clip/b"

# 3. Heads vs layers: 4 | 8 heads at 4 layers, seed 0 | seed 1; then the follow-up pair, 4x the
#    steps (seed 0): does the 8-head arm's higher loss shrink or flip with training?
lanes heads \
    "kimi-lab train --multirun experiment=heads_vs_layers seed=0 $ONE hydra.sweep.dir=$SWEEP/heads/seed0" \
    "kimi-lab train --multirun experiment=heads_vs_layers seed=1 $ONE hydra.sweep.dir=$SWEEP/heads/seed1"
LONG="seed=0 trainer.max_steps=1600 trainer.val_check_interval=100 trainer.checkpoint_every_n_steps=1600 $ONE"
lanes heads_long \
    "kimi-lab train --multirun experiment=heads_vs_layers model.attention.n_heads=4 $LONG hydra.sweep.dir=$SWEEP/heads/long4" \
    "kimi-lab train --multirun experiment=heads_vs_layers model.attention.n_heads=8 $LONG hydra.sweep.dir=$SWEEP/heads/long8" \
    "kimi-lab report $SWEEP/heads/seed0 --also $SWEEP/heads/seed1 $SWEEP/heads/long4 $SWEEP/heads/long8"

# 4. Fusion timing: early / mid / late, seed 0 | seed 1.
lanes fusion \
    "kimi-lab train --multirun experiment=fusion_ablation seed=0 $ONE hydra.sweep.dir=$SWEEP/fusion/seed0" \
    "kimi-lab train --multirun experiment=fusion_ablation seed=1 $ONE hydra.sweep.dir=$SWEEP/fusion/seed1" \
    "kimi-lab report $SWEEP/fusion/seed0 --also $SWEEP/fusion/seed1"

# 5. MoonViT-3D: joint vs per-frame, caption loss and the motion words' loss, seed 0 | seed 1.
lanes vit3d \
    "kimi-lab train --multirun experiment=vit3d_chunking seed=0 $ONE hydra.sweep.dir=$SWEEP/vit3d/seed0" \
    "kimi-lab train --multirun experiment=vit3d_chunking seed=1 $ONE hydra.sweep.dir=$SWEEP/vit3d/seed1" \
    "kimi-lab report $SWEEP/vit3d/seed0 --also $SWEEP/vit3d/seed1"

# 6. Zero-vision SFT, visual traces, joint RL: from scratch, its own data (the 90-minute target).
step zero_vision kimi-lab experiment zero_vision --scale small --out "$RUNS/zero_vision" --data-dir "$OUT/data"

# 7. PARL reward arms and critical steps against width.
step parl_ablation kimi-lab experiment parl_ablation --scale small --out "$RUNS/parl_ablation" \
    --data-dir "$OUT/data"

# 8. Held-out evaluation speed on the current decode path: a random small-vl (decode-bound,
#    never calls the tool) and zero_vision's text-only SFT model (calls it).
step bench_eval bash -c "kimi-lab bench eval --tasks $OUT/data/visual-tasks --n 64 --json \
    > $OUT/bench_eval_random.json && kimi-lab bench eval --tasks $OUT/data/visual-tasks --n 64 --json \
    --checkpoint $RUNS/zero_vision/sft_text/checkpoints/last.ckpt > $OUT/bench_eval_sft.json"

echo "[findings] done: times in $TIMES, reports under $RUNS"
