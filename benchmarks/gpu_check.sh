#!/usr/bin/env bash
# The GPU check: one script that measures, on one CUDA GPU and under nnU-Net's training settings (cudnn.benchmark,
# fp16 autocast + GradScaler, eager and torch.compile), what this plugin costs against nnU-Net, and runs the demo
# through nnUNetv2_train / nnUNetv2_predict. Written for a lent machine that is bare, has no internet, and is held for
# minutes: it finishes within GPU_CHECK_BUDGET_S seconds (default 460, under 8 minutes) by capping every step with
# `timeout` against the time left, keeps going when a step fails, and records each step's status and duration.
#
#   bash benchmarks/gpu_check.sh                       # from the repository root, on the GPU machine
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh  # dry run on the CPU with tiny sizes (paths, flags, syntax)
#   bash benchmarks/gpu_check.sh --download-wheels     # here, with internet: pack the missing packages into .whl/
#
# Steps, most important numbers first (GPU_CHECK_STEPS picks some, e.g. "4 5" for a second call):
#   1   network fwd+bwd time and peak memory, MemCifUNet vs PlainConvUNet, 128^3, batch 2, eager
#   2   CIF time per encoder stage and its share of the network's fwd+bwd
#   3   stream formulations (grouped, grouped + channels_last_3d, split, dense) vs PlainConvUNet
#   1c  step 1 with torch.compile (compiling takes minutes, so it comes after the eager numbers)
#   4   one training step: MemCifSemiTrainer vs nnUNetTrainer and MeanTeacherTrainer (cost_benchmark.py, small
#       phantom dataset, prepared in the background while steps 1-3 run; trainers eager unless
#       GPU_CHECK_TRAIN_COMPILE=1)
#   5   nnunet-mem-cif demo --device cuda (10 phantom cases) through nnUNetv2_train and nnUNetv2_predict; nnU-Net's
#       compilation off unless GPU_CHECK_DEMO_COMPILE=1 (compiled networks are measured in step 1c)
#
# Python: GPU_CHECK_PYTHON, else the first of python3, .venv/bin/python that imports torch (the lent machines' python3
# holds torch but not nnU-Net). Packages missing there are installed without internet from the wheels in
# GPU_CHECK_WHEELS (default .whl: *.whl files or *.tar.xz archives of them, as --download-wheels makes them), and this
# repository with `pip install --no-deps --no-build-isolation --target`, into GPU_CHECK_SITE (default
# /tmp/gpu_check_site) on PYTHONPATH. What still cannot be imported is written to setup.md, and the steps that need
# it are skipped.
#
# Step caps are for an H100; GPU_CHECK_CAP_SCALE multiplies them (default 4 in the CPU dry run).
#
# Results: markdown files under $OUT/benchmarks/gpu when OUT is set (the device tool brings that folder back: at most
# 8 files, so there are 7), else benchmarks/gpu (GPU_CHECK_RESULTS overrides). Every file starts with the device,
# torch, CUDA and cuDNN versions; summary.md lists every step with its status and seconds.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
START=$(date +%s)

# packages nnU-Net, this plugin and the phantom import that the lent machines' image does not hold (pip names);
# the versions are taken from the local .venv by --download-wheels, so the GPU runs what the tests here ran
WHEEL_PACKAGES="nnunetv2 dynamic-network-architectures batchgenerators batchgeneratorsv2 acvl-utils simpleitk nibabel
nilearn blosc2 ndindex numexpr connected-components-3d"

if [ "${1:-}" = "--download-wheels" ]; then
    py=${GPU_CHECK_PYTHON:-.venv/bin/python}
    mkdir -p .whl/download && rm -f .whl/download/*.whl
    for name in $WHEEL_PACKAGES; do
        version=$("$py" -c "import importlib.metadata as m; print(m.version('$name'))") || exit 1
        "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl/download "$name==$version" \
            || "$py" -m pip wheel --quiet --no-deps -w .whl/download "$name==$version" || exit 1
        # (pure-Python packages published as source only, e.g. acvl-utils and batchgenerators, are built here)
    done
    # the wheels together are over the 64 MiB the device tool carries (SimpleITK's alone is 53 MB): their contents,
    # unpacked and packed again with xz, are much smaller than their zip files; the setup below zips them back
    rm -rf .whl/unpacked && mkdir -p .whl/unpacked
    for wheel in .whl/download/*.whl; do
        "$py" -m zipfile -e "$wheel" ".whl/unpacked/$(basename "$wheel")" || exit 1
    done
    tar -C .whl/unpacked -cf - . | xz -6 -T0 > .whl/gpu_wheels.tar.xz && rm -rf .whl/download .whl/unpacked
    ls -l .whl/gpu_wheels.tar.xz
    exit 0
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET_S:-460}
STEPS=" ${GPU_CHECK_STEPS:-1 2 3 1c 4 5} "
if [ -n "${GPU_CHECK_RESULTS:-}" ]; then RESULTS=$GPU_CHECK_RESULTS
elif [ -n "${OUT:-}" ]; then RESULTS=$OUT/benchmarks/gpu
else RESULTS=benchmarks/gpu; fi
WORK=${GPU_CHECK_WORKDIR:-/tmp/gpu_check_work}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
mkdir -p "$RESULTS" "$WORK" "$SITE"
RESULTS=$(cd "$RESULTS" && pwd)
SUMMARY=$RESULTS/summary.md
export PYTHONUNBUFFERED=1  # a step cut off by its timeout keeps what it printed

if [ "$DEVICE" = cpu ]; then  # dry run: every step, flag and path, at sizes a 2-core machine runs in minutes
    PATCH="64 32 32"; BATCH=1; REPEATS=1; CIF_REPEATS=1; MEMORY=fresh; CAP_SCALE=${GPU_CHECK_CAP_SCALE:-4}
    COST_ARGS="--cases 6 --spacing 4 --repeats 1"; DEMO_CASES=10
    [ "${GPU_CHECK_COMPILE_ON_CPU:-0}" = 1 ] || STEPS=${STEPS/ 1c / }  # compiling the full network takes long here
else
    # CUDA: the allocator's peak counts live tensors only, so it is measured in this process after the timings
    # (--memory inline) instead of one fresh process per network, which would compile every network twice
    PATCH="128 128 128"; BATCH=2; REPEATS=5; CIF_REPEATS=10; MEMORY=inline; CAP_SCALE=${GPU_CHECK_CAP_SCALE:-1}
    COST_ARGS="--cases 8 --spacing 2 --repeats 3"; DEMO_CASES=10
fi

elapsed() { echo $(( $(date +%s) - START )); }
note() { echo "$*" | tee -a "$SUMMARY"; }

# ------------------------------------------------------------------------------------------------ python, packages
PY=""
for candidate in ${GPU_CHECK_PYTHON:-} python3 .venv/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
        PY=$candidate; break
    fi
done
# absolute (not resolved: a venv's python must keep its path), so that the checks below can run outside the repo
case "$PY" in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac
{
    echo "# GPU check: summary"
    echo
    echo "started $(date -u '+%Y-%m-%d %H:%M:%S UTC'), device $DEVICE, steps${STEPS}, budget ${BUDGET} s"
} > "$SUMMARY"
if [ -z "$PY" ]; then
    note "no python with torch found (tried: ${GPU_CHECK_PYTHON:-} python3 .venv/bin/python): nothing can run." \
         "Set GPU_CHECK_PYTHON to an interpreter that imports torch."
    exit 1
fi

SETUP=$RESULTS/setup.md
{
    echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
    if ls "$WHEELS"/*.tar.xz >/dev/null 2>&1 || ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        mkdir -p "$WORK/wheels" "$WORK/unpacked"
        for archive in "$WHEELS"/*.tar.xz; do [ -e "$archive" ] && tar -C "$WORK/unpacked" -xJf "$archive"; done
        for unpacked in "$WORK"/unpacked/*.whl; do  # zipped back into wheels, which pip installs
            [ -d "$unpacked" ] && (cd "$unpacked" && "$PY" -m zipfile -c "$WORK/wheels/$(basename "$unpacked")" \
                $(ls -A))
        done
        for wheel in "$WHEELS"/*.whl; do [ -e "$wheel" ] && cp "$wheel" "$WORK/wheels/"; done
        echo "wheels from $WHEELS: $(ls "$WORK/wheels" | tr '\n' ' ')"
        WHEEL_FILES=$(ls "$WORK"/wheels/*.whl)
    else
        WHEEL_FILES=""  # (not $WORK/wheels: what an earlier run left there is not what $WHEELS holds now)
        echo "no wheels in $WHEELS: using what $PY has"
    fi
    # the wheels and this repository itself, as setup.py installs it (no internet: no build isolation, no
    # dependencies), in one call: a second `pip install --target --upgrade` replaces the first one's bin/ folder,
    # and with it nnU-Net's console scripts (nnUNetv2_plan_and_preprocess, ...)
    timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --upgrade --target "$SITE" $WHEEL_FILES . 2>&1 | tail -5
    echo "console scripts the steps call: $(ls "$SITE/bin" 2>/dev/null \
        | grep -xE 'nnUNetv2_plan_and_preprocess|nnUNetv2_train|nnUNetv2_predict|nnunet-mem-cif' | tr '\n' ' ')"
} > "$WORK/setup_body" 2>&1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PATH=$SITE/bin:$PATH

# run in $WORK: from the repository root, `python -` would import the uninstalled nnunet_mem_cif folder there
(cd "$WORK" && "$PY" - "$DEVICE") > "$WORK/checks.sh" 2>> "$WORK/setup_body" <<'EOF'
import importlib, sys
needs = {
    "NETWORK_OK": ["torch", "numpy", "dynamic_network_architectures", "nnunet_mem_cif.architectures"],
    "TRAINER_OK": ["nnunetv2", "batchgenerators", "batchgeneratorsv2", "acvl_utils", "SimpleITK", "nibabel",
                   "blosc2", "nilearn", "nnunet_mem_cif.trainers", "nnunet_mem_cif.demo", "nnunet_mem_cif.cli"],
}
report = []
for flag, modules in needs.items():
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # an import that fails for any reason blocks the steps that need it
            missing.append(f"{module} ({type(error).__name__}: {error})")
    print(f"{flag}={0 if missing else 1}")
    report.append(f"- {flag}: " + ("all importable" if not missing else "missing " + "; ".join(missing)))
import torch
cuda = torch.cuda.is_available()
print(f"DEVICE_OK={1 if sys.argv[1] == 'cpu' or cuda else 0}")
report.append(f"- torch {torch.__version__}, CUDA available: {cuda}")
print("cat >> \"$WORK/setup_body\" <<'REPORT'\n" + "\n".join(report) + "\nREPORT")
EOF
NETWORK_OK=0; TRAINER_OK=0; DEVICE_OK=0
# shellcheck disable=SC1091
. "$WORK/checks.sh"

HEADER=$(cd "$WORK" && "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
if device == "cuda" and torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    name += f", {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
else:
    import platform
    name = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"device: {name}; torch {torch.__version__}; CUDA {torch.version.cuda}; cuDNN {cudnn}")
EOF
)
command -v nvidia-smi >/dev/null 2>&1 && HEADER="$HEADER; driver $(nvidia-smi --query-gpu=driver_version \
    --format=csv,noheader 2>/dev/null | head -1)"
{ echo "# setup"; echo; echo "$HEADER"; echo; cat "$WORK/setup_body"; } > "$SETUP"
{ echo; echo "$HEADER"; echo; echo "| step | status | seconds | cap [s] |"; echo "|---|---|---|---|"; } >> "$SUMMARY"
echo "- setup ($(elapsed) s): network steps $([ "$NETWORK_OK" = 1 ] && echo can || echo CANNOT) run, trainer steps" \
     "$([ "$TRAINER_OK" = 1 ] && echo can || echo CANNOT) run, device" \
     "$([ "$DEVICE_OK" = 1 ] && echo ok || echo MISSING) (details: setup.md)" > "$WORK/setup_line"

# ------------------------------------------------------------------------------------------------ steps
FAILED=()
# run_step ID TITLE FILE CAP_SECONDS NEEDS COMMAND...: runs COMMAND with at most CAP seconds (less when the budget
# left is smaller), its output appended to FILE under a header, its status appended to the summary
run_step() {
    local id=$1 title=$2 file=$3 cap=$(( $4 * CAP_SCALE )) needs=$5; shift 5
    case "$STEPS" in *" $id "*) ;; *) return 0 ;; esac
    local left=$(( BUDGET - $(elapsed) )) status rc started
    local out=$RESULTS/$file
    [ -f "$out" ] && [ -n "${WRITTEN[$file]:-}" ] \
        || { echo "# $title" > "$out"; echo >> "$out"; echo "$HEADER" >> "$out"; }
    WRITTEN[$file]=1
    { echo; echo "## step $id: $title"; echo; echo "\`\$ $*\`"; echo; } >> "$out"
    if [ "$needs" != 1 ]; then
        status="skipped: a package or the device is missing (setup.md)"; FAILED+=("$id")
        echo "| $id $title | $status | 0 | $cap |" >> "$SUMMARY"; echo "$status" >> "$out"; return 0
    fi
    left=$(( left - 12 ))  # timeout's grace before it kills (-k 10), and the lines after the step
    if (( left < 20 )); then
        status="skipped: budget used up"; FAILED+=("$id")
        echo "| $id $title | $status | 0 | $cap |" >> "$SUMMARY"; echo "$status" >> "$out"; return 0
    fi
    (( cap > left )) && cap=$left
    started=$(date +%s)
    echo "[$(elapsed) s] step $id: $title (cap $cap s)"
    timeout -k 10 "$cap" "$@" >> "$out" 2>&1
    rc=$?
    case $rc in
        0) status="ok" ;;
        124|137) status="**timed out** after $cap s (what it printed is in $file)"; FAILED+=("$id") ;;
        *) status="**failed**, exit code $rc (see $file)"; FAILED+=("$id") ;;
    esac
    echo "| $id $title | $status | $(( $(date +%s) - started )) | $cap |" >> "$SUMMARY"
    echo "  -> $status"
}
declare -A WRITTEN

ALL_OK=$(( NETWORK_OK && DEVICE_OK ))
TRAIN_OK=$(( NETWORK_OK && TRAINER_OK && DEVICE_OK ))
COST_WORK=$WORK/cost
DEMO_WORK=$WORK/demo
# step 4 keeps 5 trainers with their loaders alive; nnU-Net's default of 12 workers each would be ~150 processes
N_PROC_DA=${nnUNet_n_proc_DA:-2}
COMPILE_ENV=$([ "${GPU_CHECK_TRAIN_COMPILE:-0}" = 1 ] && echo --compile)

# The phantom dataset of step 4 is made, planned and preprocessed on the CPU while steps 1-3 use the GPU (niced,
# 2 processes of 16 cores: the timings of 1-3 are launch- and GPU-bound); step 4 then finds it ready.
PREP_PID=""
case "$STEPS" in *" 4 "*)
    if [ "$TRAIN_OK" = 1 ]; then
        rm -rf "$COST_WORK"
        nice -n 15 env nnUNet_n_proc_DA="$N_PROC_DA" timeout "$(( BUDGET > 60 ? BUDGET - 60 : BUDGET ))" "$PY" \
            benchmarks/cost_benchmark.py --workdir "$COST_WORK" --device "$DEVICE" $COST_ARGS --prepare-only \
            > "$WORK/prepare.log" 2>&1 &
        PREP_PID=$!
    fi ;;
esac

run_step 1 "network: MemCifUNet vs PlainConvUNet, eager" 1_network.md 90 "$ALL_OK" \
    "$PY" benchmarks/network_benchmark.py --device "$DEVICE" --patch $PATCH --batch "$BATCH" --repeats "$REPEATS" \
    --variants memcif --memory "$MEMORY"
run_step 2 "CIF time per encoder stage" 2_cif_per_stage.md 45 "$ALL_OK" \
    "$PY" benchmarks/stream_benchmark.py --tables cif --device "$DEVICE" --patch $PATCH --batch "$BATCH" \
    --repeats "$CIF_REPEATS" --memory none
run_step 3 "stream formulations" 3_stream_formulations.md 100 "$ALL_OK" \
    "$PY" benchmarks/stream_benchmark.py --tables streams --device "$DEVICE" --patch $PATCH --batch "$BATCH" \
    --repeats "$REPEATS" --memory "$MEMORY"
run_step 1c "network: MemCifUNet vs PlainConvUNet, torch.compile" 1_network.md 150 "$ALL_OK" \
    "$PY" benchmarks/network_benchmark.py --device "$DEVICE" --patch $PATCH --batch "$BATCH" --repeats "$REPEATS" \
    --variants memcif --memory "$MEMORY" --compile

if [ -n "$PREP_PID" ]; then
    wait "$PREP_PID"; prep_rc=$?
    { echo "# phantom dataset for step 4 (prepared in the background, exit code $prep_rc)"; echo '```';
      tail -n 30 "$WORK/prepare.log"; echo '```'; } > "$RESULTS/4_training_step.md.prep"
fi
run_step 4 "training step: MemCifSemiTrainer vs nnUNetTrainer, MeanTeacherTrainer" 4_training_step.md 180 \
    "$TRAIN_OK" env nnUNet_n_proc_DA="$N_PROC_DA" "$PY" benchmarks/cost_benchmark.py --workdir "$COST_WORK" \
    --device "$DEVICE" $COST_ARGS --sections step --trainers nnUNetTrainer MeanTeacherTrainer MemCifSemiTrainer \
    $COMPILE_ENV
if [ -f "$RESULTS/4_training_step.md.prep" ]; then
    cat "$RESULTS/4_training_step.md.prep" >> "$RESULTS/4_training_step.md"; rm -f "$RESULTS/4_training_step.md.prep"
fi

rm -rf "$DEMO_WORK"
run_step 5 "demo through nnUNetv2_train and nnUNetv2_predict" 5_demo.md 600 "$TRAIN_OK" \
    env nnUNet_compile="${GPU_CHECK_DEMO_COMPILE:-0}" nnunet-mem-cif demo --device "$DEVICE" --cases "$DEMO_CASES" \
    --workdir "$DEMO_WORK"
if [ -d "$DEMO_WORK/logs" ] && [[ "$STEPS" == *" 5 "* ]]; then
    for log in "$DEMO_WORK"/logs/*.log; do
        { echo; echo "### $(basename "$log") (last 15 lines)"; echo '```'; tail -n 15 "$log"; echo '```'; } \
            >> "$RESULTS/5_demo.md"
    done
fi

{
    echo
    cat "$WORK/setup_line"
    echo "- total $(elapsed) s of a ${BUDGET} s budget; failed or skipped: ${FAILED[*]:-none}"
} >> "$SUMMARY"
cat "$SUMMARY"
[ ${#FAILED[@]} -eq 0 ]
