"""Check MEM's and CIF's lr multipliers (``mem_lr_multiplier``, ``cif_lr_multiplier``) on nnU-Net's fold validation
cases only.

The dataset made here has no test cases at all (``--test-fraction 0``), so the choice cannot see a test case: 40
phantom cases at 5 mm, fold 0 of nnU-Net's 5-fold split (32 training cases, 8 validation cases), 10 % of the
training cases labeled (seeded, as in the results table) and the rest used as unlabeled data. For every setting
(``MEM:CIF``) and seed, ``nnUNetv2_train`` trains ``MemCifSemiTrainer_table`` (the product trainer) and runs nnU-Net's
own fold validation; the table shows the validation Dice, the paired difference to 1:1 (nnU-Net's single learning rate;
same seed, same labeled cases) and how far CIF moved from its initialisation.

    python experiments/choose_fusion_lr.py [--workdir choose_fusion_lr_work] [--multipliers 1 30:150]
        [--seeds 0 1 2] [--epochs 10] [--iterations 20]

Resumable: finished runs are skipped, an interrupted one resumes from its checkpoint.
"""
import argparse
import json
import os
import statistics
import sys
from typing import Dict, Optional, Tuple

from gradient_scale import label

from nnunet_mem_cif.results_table import fold_folder, parse_lr_multipliers
from nnunet_mem_cif.nnunet_commands import nnunet_environment, run_step
from nnunet_mem_cif.discovery import console_script
from nnunet_mem_cif.trainers.table_runs import TABLE_RUN_VARIABLE
from nnunet_mem_cif.checkpoints import read_checkpoint

DATASET_ID, DATASET_NAME = 994, "Dataset994_FusionLR"
TRAINER, FOLD, LABELED_FRACTION = "MemCifSemiTrainer_table", 0, 0.1


def prepare(workdir: str, env: Dict[str, str]) -> None:
    """Phantom -> nnU-Net dataset without test cases -> plans and preprocessing (once)."""
    if os.path.isfile(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")):
        return
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    run_step("phantom", [console_script("nnunet-mem-cif"), "make-phantom", os.path.join(workdir, "phantom"),
                         "--cases", "40", "--spacing", "5", "--seed", "0", "--overwrite"], env,
             os.path.join(workdir, "logs", "phantom.log"))
    run_step("convert", [console_script("nnunet-mem-cif"), "convert-brats2019", os.path.join(workdir, "phantom"),
                         "--dataset-id", str(DATASET_ID), "--name", DATASET_NAME.split("_", 1)[1],
                         "--test-fraction", "0", "--seed", "0", "--overwrite"], env,
             os.path.join(workdir, "logs", "convert.log"))
    run_step("nnUNetv2_plan_and_preprocess", [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                                              "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env,
             os.path.join(workdir, "logs", "plan_and_preprocess.log"))


def run_name(multipliers: Tuple[float, float]) -> str:
    """Folder name of a setting (one number where MEM and CIF share it, as the first runs of this script did)."""
    mem, cif = multipliers
    return f"multiplier{mem:g}" if mem == cif else f"multiplier{mem:g}-{cif:g}"


def train(workdir: str, env: Dict[str, str], multipliers: Tuple[float, float], seed: int, epochs: int,
          iterations: int) -> str:
    """One training + fold validation (skipped when done, resumed when interrupted); returns its fold folder."""
    # the schedule is part of the name: runs of different lengths must never be compared as one setting
    run_dir = os.path.join(workdir, "runs", f"{run_name(multipliers)}_{epochs}x{iterations}_seed{seed}")
    fold = fold_folder(run_dir, DATASET_NAME, TRAINER, FOLD)
    if os.path.isfile(os.path.join(fold, "validation", "summary.json")):
        return fold
    os.makedirs(run_dir, exist_ok=True)
    run_env = dict(env, nnUNet_results=os.path.join(run_dir, "nnUNet_results"))
    run_env[TABLE_RUN_VARIABLE] = json.dumps({"labeled_fraction": LABELED_FRACTION, "epochs": epochs,
                                              "iterations_per_epoch": iterations, "seed": seed,
                                              "mem_lr_multiplier": multipliers[0],
                                              "cif_lr_multiplier": multipliers[1]})
    resume = any(os.path.isfile(os.path.join(fold, f"checkpoint_{k}.pth")) for k in ("latest", "final"))
    run_step(f"multipliers {label(multipliers)}, seed {seed}: nnUNetv2_train",
             [console_script("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", str(FOLD), "-tr", TRAINER,
              "-device", "cpu"] + (["--c"] if resume else []), run_env, os.path.join(run_dir, "train.log"),
             progress_pattern=r"Epoch time:", total=epochs)
    return fold


def validation_dice(fold: str) -> float:
    with open(os.path.join(fold, "validation", "summary.json")) as f:
        return json.load(f)["foreground_mean"]["Dice"]


def cif_summary(fold: str) -> Optional[str]:
    from diagnose_table import cif_drift
    return cif_drift(read_checkpoint(os.path.join(fold, "checkpoint_final.pth"), "cpu")["network_weights"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="choose_fusion_lr_work")
    parser.add_argument("--multipliers", type=parse_lr_multipliers, nargs="+", default=[(1.0, 1.0), (30.0, 150.0)],
                        help="MEM:CIF settings (one number: both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    if (1.0, 1.0) not in args.multipliers:
        parser.error("include 1 (nnU-Net's single learning rate): differences are paired against it")
    if args.epochs < 1 or args.iterations < 1 or min(args.seeds) < 0:
        parser.error("epochs and iterations must be > 0, seeds >= 0")
    workdir = os.path.abspath(args.workdir)
    env = nnunet_environment(workdir, "cpu")
    prepare(workdir, env)
    dice: Dict[Tuple[float, float], Dict[int, float]] = {m: {} for m in args.multipliers}
    rows = []
    for seed in args.seeds:
        for multiplier in args.multipliers:
            fold = train(workdir, env, multiplier, seed, args.epochs, args.iterations)
            dice[multiplier][seed] = validation_dice(fold)
            rows.append(f"| {label(multiplier)} | {seed} | {dice[multiplier][seed]:.4f} | "
                        f"{dice[multiplier][seed] - dice[(1.0, 1.0)][seed]:+.4f} | {cif_summary(fold) or '-'} |")
    print(f"\nMemCifSemiTrainer ({TRAINER}) on {DATASET_NAME} (no test cases), fold {FOLD}: nnU-Net's validation "
          f"Dice (foreground mean over its 8 validation cases), {LABELED_FRACTION:.0%} labeled, {args.epochs} "
          f"epochs x {args.iterations} iterations, CPU\n")
    print("| multipliers MEM:CIF | seed | validation Dice | vs 1:1 (same seed) | CIF after training |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| multipliers MEM:CIF | validation Dice, mean ± std over seeds | paired difference to 1:1, mean ± std |")
    print("|---|---|---|")
    for multiplier, values in dice.items():
        differences = [values[s] - dice[(1.0, 1.0)][s] for s in args.seeds]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"| {label(multiplier)} | {statistics.mean(values.values()):.4f} ± "
              f"{spread(list(values.values())):.4f} | {statistics.mean(differences):+.4f} ± "
              f"{spread(differences):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
