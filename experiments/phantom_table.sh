#!/usr/bin/env bash
# The phantom table of the README: 60 phantom cases at 5 mm (50 training, 10 held-out test cases), all
# six methods x 1 / 5 / 10 % labeled, 10 epochs x 10 iterations, seed 0, on the CPU; then seeds 1 and 2 at 1 % for
# supervised nnU-Net, Mean Teacher and the full method (how much one seed's numbers move). Resumable: after an
# interruption run it again. Copies results.md/.csv/.png, every run.json and diagnostics.md (diagnose_table.py)
# into experiments/phantom_table/ (the seed runs into experiments/phantom_table/seeds/).
#
#     bash experiments/phantom_table.sh [WORKDIR]        # default WORKDIR: phantom_table_work
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
nnunet-mem-cif table --dataset-id 993 --output-dir "$WORKDIR/table" --epochs 10 --iterations 10 --seeds 0 \
    --device cpu
SEED_METHODS=(nnunet mean-teacher memcif)
nnunet-mem-cif table --dataset-id 993 --output-dir "$WORKDIR/seeds" --fractions 0.01 \
    --methods "${SEED_METHODS[@]}" --epochs 10 --iterations 10 --seeds 1 2 --device cpu
for method in "${SEED_METHODS[@]}"; do  # seed 0 of the same rows, so that seeds/results.md shows all three
    mkdir -p "$WORKDIR/seeds/runs/$method/fraction0.01_seed0"
    cp "$WORKDIR/table/runs/$method/fraction0.01_seed0/run.json" "$WORKDIR/seeds/runs/$method/fraction0.01_seed0/"
done
nnunet-mem-cif table --dataset-id 993 --output-dir "$WORKDIR/seeds" --report-only

EXPERIMENTS="$(dirname "$(realpath "$0")")"
TARGET="$EXPERIMENTS/phantom_table"
for part in table seeds; do
    destination="$TARGET"; [ "$part" = seeds ] && destination="$TARGET/seeds"
    mkdir -p "$destination"
    cp "$WORKDIR/$part"/results.md "$WORKDIR/$part"/results.csv "$WORKDIR/$part"/results.png "$destination"/
    (cd "$WORKDIR/$part" && find runs -name run.json -exec cp --parents {} "$destination"/ \;)
done
(cd "$EXPERIMENTS" && python diagnose_table.py "$WORKDIR/table") > "$TARGET/diagnostics.md"
(cd "$EXPERIMENTS" && python diagnose_table.py "$WORKDIR/seeds") > "$TARGET/seeds/diagnostics.md"
echo "copied the table to $TARGET"
