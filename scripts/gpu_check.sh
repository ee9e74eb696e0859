#!/usr/bin/env bash
# The GPU check: one command, run once on a machine with one NVIDIA GPU (docs/performance.md#gpu-check).
#
#   bash scripts/gpu_check.sh
#
# It runs, in under 8 minutes (setting up .venv excluded):
#   1. the CUDA-only tests (tests/test_cuda.py, marker `cuda`);
#   2. `segdistill bench` of the reference pair (PSPNet-R101-D8 -> PSPNet-R18-D8) at 512x1024, batch 2
#      and batch 8, all fast paths off vs all on (synthetic data, random weights: no download);
#   3. on CamVid at full resolution: a PSPNet-R50-D8 teacher trained from scratch for 300 iterations,
#      then a 300-iteration CWD distillation into PSPNet-R18-D8, each evaluated at 480x360.
# and prints one markdown table at the end (check | result | numbers). Logs, the junit XML, the bench
# JSON and both runs stay in the output folder.
#
# Exit code: 0 every check passed (skips allowed), 1 a check failed or timed out, 3 no CUDA here
# (one line is printed and nothing runs).
#
#   GPU_CHECK_OUT     output folder (default runs/gpu_check/<date>-<time>)
#   SEGDISTILL_SHARED folder holding data/camvid for the teacher fast-path tests (default ../shared)
#   CAMVID_ROOT       CamVid in the SegNet layout for step 3 (default $SEGDISTILL_SHARED/data/camvid);
#                     without it, the tests that need it and step 3 report "skipped"
#   SEGDISTILL_VENV   the Python environment (default .venv; created by scripts/bootstrap.sh if missing)
#   GPU_CHECK_DRY_RUN=1  developers only: the same plumbing on the CPU with tiny sizes (the numbers mean
#                     nothing); the only way to exercise this script without a GPU
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${SEGDISTILL_VENV:-.venv}"
py="$venv/bin/python"
dry="${GPU_CHECK_DRY_RUN:-0}"

# ---- 0. is there CUDA at all? (nothing else runs before this answer) ----------------------------
if [ "$dry" != 1 ]; then
  if [ ! -x "$py" ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
      echo "gpu_check: no CUDA on this machine (no nvidia-smi and no $venv); nothing was run"
      exit 3
    fi
    bash scripts/bootstrap.sh dev >&2 || { echo "gpu_check: setting up $venv failed" >&2; exit 1; }
  fi
  why=$("$py" -c "import torch; print('' if torch.cuda.is_available() else f'torch {torch.__version__}')" 2>/dev/null) \
    || why="torch cannot be imported from $venv"
  if [ -n "$why" ]; then
    echo "gpu_check: no CUDA on this machine (torch.cuda.is_available() is False: $why); nothing was run"
    exit 3
  fi
fi

# ---- settings -----------------------------------------------------------------------------------
shared="${SEGDISTILL_SHARED:-../shared}"
camvid="${CAMVID_ROOT:-$shared/data/camvid}"
out="${GPU_CHECK_OUT:-runs/gpu_check/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export SEGDISTILL_SHARED="$shared" PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the exact-resume test (read at first use)
bench_cfg=configs/cityscapes/cwd_logits_pspnet_r101-d8_pspnet_r18-d8_80k.yaml
if [ "$dry" = 1 ]; then
  device=cpu budget=1800
  export SEGDISTILL_CUDA_TESTS_ON_CPU=1
  bench_crop="64 128" bench_batches="2 4" bench_iters=1 bench_warmup=0
  cv_iters=4 cv_batch=2 cv_workers=1 cv_scale="[120,90]" cv_crop="[64,80]" cv_eval="[120,90]"
  cv_models=("student.model=pspnet_r50-d8-tiny" "student.model=pspnet_r18-d8-tiny teacher.model=pspnet_r50-d8-tiny")
else
  device=cuda budget=435  # the three steps; with set-up checks, the 15 s kill grace and the table, < 8 min
  bench_crop="512 1024" bench_batches="2 8" bench_iters=6 bench_warmup=2
  cv_iters=300 cv_batch=8 cv_workers=8 cv_scale="[480,360]" cv_crop="[256,320]" cv_eval=null
  cv_models=("" "")
fi
start=$(date +%s)
: > "$out/sections.tsv"

# run NAME CAP_SECONDS CMD...: run CMD in its own process group with its output in $out/NAME.log, for
# at most CAP seconds and never past the budget. From the limit on the group gets SIGINT every 3 s (the
# trainer turns a first Ctrl-C into a stop and only a second one into KeyboardInterrupt, which is what
# ends pytest with its junit XML written), and SIGKILL after 15 s. Appends
# "NAME<TAB>exit code<TAB>seconds" to sections.tsv (exit code 124: the limit was reached).
run() {
  local name=$1 cap=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 20 ]; then
    printf '%s\t%s\t%s\n' "$name" "budget" 0 >> "$out/sections.tsv"
    return 124
  fi
  echo "gpu_check: $name (at most ${limit}s; log $out/$name.log)" >&2
  local t0=$SECONDS late=0 rc=0
  # Job control for this one job: its own process group (pgid = pid), and SIGINT not ignored, which a
  # script's background job otherwise is (Python then never raises KeyboardInterrupt).
  set -m
  "$@" > "$out/$name.log" 2>&1 &
  local pid=$!
  set +m
  while kill -0 "$pid" 2>/dev/null; do
    if [ $(( SECONDS - t0 )) -ge "$limit" ]; then
      late=1
      if [ $(( SECONDS - t0 )) -ge $(( limit + 15 )) ]; then kill -KILL -- "-$pid" 2>/dev/null; break; fi
      [ $(( (SECONDS - t0 - limit) % 3 )) = 0 ] && kill -INT -- "-$pid" 2>/dev/null
    fi
    sleep 1
  done
  wait "$pid" || rc=$?
  [ "$late" = 0 ] || rc=124
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" >> "$out/sections.tsv"
  return "$rc"
}

"$py" - > "$out/environment.json" 2>/dev/null <<'EOF'
import json, subprocess, torch
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
print(json.dumps(env))
EOF

# ---- 1. the CUDA-only tests ---------------------------------------------------------------------
run tests 180 "$py" -m pytest tests/test_cuda.py -m cuda -v -rs -p no:cacheprovider \
  -o junit_family=xunit1 --junitxml="$out/tests.xml"

# ---- 2. the benchmark of the reference pair -------------------------------------------------------
for b in $bench_batches; do
  # shellcheck disable=SC2086  # bench_crop is two numbers
  run "bench_b$b" 100 "$venv/bin/segdistill" bench "$bench_cfg" --synthetic --compare --crop $bench_crop \
    --batch "$b" --iters "$bench_iters" --warmup "$bench_warmup" --json "$out/bench_b$b.json" "train.device=$device" \
    train.global_batch=null  # a step at batch b, not the recipe's global batch of 8
done

# ---- 3. CamVid at full resolution: a 300-iteration teacher, then a 300-iteration CWD student ----------
if [ -d "$camvid" ]; then
  common=("data.root=$camvid" "data.scale=$cv_scale" "data.crop_size=$cv_crop" "data.eval_scale=$cv_eval"
          "data.workers=$cv_workers" "train.device=$device" "train.iters=$cv_iters" "train.batch_size=$cv_batch"
          "train.eval_interval=$cv_iters" "train.checkpoint_interval=$cv_iters" "train.log_interval=50"
          "train.global_batch=null"
          "optim.warmup_iters=$(( cv_iters / 16 ))")
  # shellcheck disable=SC2086  # cv_models holds zero or more overrides
  run camvid_teacher 150 "$venv/bin/segdistill" train configs/camvid/pspnet_r50-d8_teacher.yaml \
      --work-dir "$out/camvid/teacher" --no-resume "${common[@]}" ${cv_models[0]} \
    && run camvid_student 150 "$venv/bin/segdistill" train configs/camvid/cwd_logits.yaml \
      --work-dir "$out/camvid/student" --no-resume "${common[@]}" ${cv_models[1]} \
      "teacher.checkpoint=$out/camvid/teacher/final.pth"
else
  printf '%s\t%s\t%s\n' camvid "skipped: no CamVid at $camvid (set CAMVID_ROOT)" 0 >> "$out/sections.tsv"
fi

# ---- the table ----------------------------------------------------------------------------------
"$py" scripts/gpu_check_report.py "$out" --wall "$(( $(date +%s) - start ))"
