"""Dice when one modality is missing at inference (zero-filled), MemCifSemiTrainer vs nnU-Net's trainer.

Runs on the work folder of ``nnunet-mem-cif demo`` (phantom data, 10 % labeled, MemCifSemiTrainer_demo trained).
Trains nnU-Net's own trainer on the same labeled cases and schedule (SupervisedBaselineTrainer_demo) if it is not
there yet, then predicts the held-out test cases with all modalities and with each modality replaced by an all-zero
image, through nnUNetv2_predict, and prints a markdown table (mean Dice over the test cases).

    nnunet-mem-cif demo --workdir mem_cif_demo
    python experiments/missing_modality.py --workdir mem_cif_demo
"""
import argparse
import json
import os
import shutil
import subprocess

import numpy as np
import SimpleITK as sitk
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

from nnunet_mem_cif.demo import DEMO_DATASET, DEMO_DATASET_ID, DEMO_TRAINER
from nnunet_mem_cif.discovery import console_script
from nnunet_mem_cif.evaluation import evaluate_folders
from nnunet_mem_cif.nnunet_commands import nnunet_environment

MODALITY_NAMES = ("T1", "T1ce", "T2", "FLAIR")
BASELINE = "SupervisedBaselineTrainer_demo"


def zero_filled_copy(images: str, target: str, channel: int) -> None:
    """All cases of ``images`` with channel ``channel`` replaced by zeros (same geometry): how to predict when that
    modality was not acquired."""
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(images)):
        source = os.path.join(images, name)
        if name.endswith(f"_{channel:04d}.nii.gz"):
            image = sitk.ReadImage(source)
            zeros = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(image).shape, np.float32))
            zeros.CopyInformation(image)
            sitk.WriteImage(zeros, os.path.join(target, name))
        else:
            shutil.copyfile(source, os.path.join(target, name))


def format_table(rows: dict, num_cases: int) -> str:
    """Markdown: mean Dice per region, and the drop against all modalities for each missing one."""
    lines = [f"test cases: {num_cases}, mean Dice (drop vs. all modalities)", "",
             "| trainer | missing modality | whole tumor | tumor core | enhancing tumor | mean |",
             "|---|---|---|---|---|---|"]
    for (trainer, missing), means in rows.items():
        full = rows[(trainer, "none")]
        cells = []
        for region in ("whole_tumor", "tumor_core", "enhancing_tumor", "mean"):
            drop = "" if missing == "none" else f" ({means[region]['dice'] - full[region]['dice']:+.3f})"
            cells.append(f"{means[region]['dice']:.3f}{drop}")
        lines.append(f"| {trainer} | {missing} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="mem_cif_demo")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    env = nnunet_environment(workdir, args.device)
    dataset = os.path.join(env["nnUNet_raw"], DEMO_DATASET)
    if not os.path.isdir(dataset):
        raise SystemExit(f"{dataset} not found: run 'nnunet-mem-cif demo --workdir {args.workdir}' first")
    baseline_folder = os.path.join(env["nnUNet_results"], DEMO_DATASET,
                                   convert_trainer_plans_config_to_identifier(BASELINE, "nnUNetPlans", "3d_fullres"),
                                   "fold_all")
    if not os.path.isfile(os.path.join(baseline_folder, "checkpoint_final.pth")):
        print(f"training {BASELINE} (nnU-Net's trainer, same labeled cases and schedule) ...", flush=True)
        subprocess.run([console_script("nnUNetv2_train"), str(DEMO_DATASET_ID), "3d_fullres", "all", "-tr", BASELINE,
                        "-device", args.device], env=env, check=True, stdout=subprocess.DEVNULL)

    scratch = os.path.join(workdir, "missing_modality")
    shutil.rmtree(scratch, ignore_errors=True)
    settings = {"none": None, **{name: channel for channel, name in enumerate(MODALITY_NAMES)}}
    rows = {}
    for missing, channel in settings.items():
        images = os.path.join(dataset, "imagesTs")
        if channel is not None:
            images = os.path.join(scratch, f"images_without_{missing}")
            zero_filled_copy(os.path.join(dataset, "imagesTs"), images, channel)
        for trainer in (DEMO_TRAINER, BASELINE):
            output = os.path.join(scratch, f"{trainer}_without_{missing}")
            print(f"predicting with {trainer}, missing modality: {missing}", flush=True)
            subprocess.run([console_script("nnUNetv2_predict"), "-i", images, "-o", output, "-d",
                            str(DEMO_DATASET_ID), "-c", "3d_fullres", "-tr", trainer, "-f", "all", "-device",
                            args.device, "-npp", "1", "-nps", "1"], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            rows[(trainer, missing)] = evaluate_folders(output, os.path.join(dataset, "labelsTs"))["mean"]

    table = format_table(rows, len(os.listdir(os.path.join(dataset, "labelsTs"))))
    print(table)
    with open(os.path.join(scratch, "missing_modality.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(scratch, "missing_modality.json"), "w") as f:
        json.dump({f"{t}|{m}": v for (t, m), v in rows.items()}, f, indent=2)


if __name__ == "__main__":
    main()
