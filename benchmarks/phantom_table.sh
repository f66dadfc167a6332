#!/usr/bin/env bash
# The phantom table of the README (issue #5): 60 phantom cases at 5 mm (50 training, 10 held-out test cases), all
# six methods x 1 / 5 / 10 % labeled, 10 epochs x 10 iterations, seed 0, on the CPU. Resumable: after an
# interruption run it again. Copies results.md/.csv/.png and every run.json into benchmarks/phantom_table/.
#
#     bash benchmarks/phantom_table.sh [WORKDIR]        # default WORKDIR: phantom_table_work
set -euo pipefail
WORKDIR=$(realpath -m "${1:-phantom_table_work}")
export nnUNet_raw="$WORKDIR/nnUNet_raw" nnUNet_preprocessed="$WORKDIR/nnUNet_preprocessed"
export nnUNet_results="$WORKDIR/nnUNet_results"
export nnUNet_compile="${nnUNet_compile:-0}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-1}"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-1}"
if [ ! -f "$nnUNet_preprocessed/Dataset993_PhantomTable/nnUNetPlans.json" ]; then
    rm -rf "$WORKDIR/phantom"
    nnunet-mem-cif make-phantom "$WORKDIR/phantom" --cases 60 --spacing 5 --seed 0
    nnunet-mem-cif convert-brats2019 "$WORKDIR/phantom" --dataset-id 993 --name PhantomTable --test-fraction 0.1667 \
        --seed 0 --overwrite
    nnUNetv2_plan_and_preprocess -d 993 -c 3d_fullres -np 1 -npfp 1
fi
nnunet-mem-cif benchmark --dataset-id 993 --output-dir "$WORKDIR/table" --epochs 10 --iterations 10 --seeds 0 \
    --device cpu
TARGET="$(dirname "$(realpath "$0")")/phantom_table"
mkdir -p "$TARGET"
cp "$WORKDIR"/table/results.md "$WORKDIR"/table/results.csv "$WORKDIR"/table/results.png "$TARGET"/
(cd "$WORKDIR/table" && find runs -name run.json -exec cp --parents {} "$TARGET"/ \;)
echo "copied the table to $TARGET"
