"""Where the cross-modal consistency term asks for what the student cannot see: per dropped modality and region.

For a trained semi-supervised run (any trainer of this plugin with a teacher) and the fold's validation cases (never
test cases), one patch per case centred on the tumor: the teacher sees all modalities, the student the same patch
with one modality zeroed, as the strong view's dropout does. Printed per dropped modality: the consistency term
(mean squared difference of the region probabilities) inside each reference region, and the student's Dice per
region. A region that one modality alone shows (enhancing tumor on T1ce) collapses when that modality is dropped,
and the consistency term then pulls the student towards a prediction it has no evidence for (docs/design.md §3).

    python experiments/consistency_by_modality.py FOLD_FOLDER [--cases 20] [--device cpu]

FOLD_FOLDER is nnUNetv2_train's output folder of the run (with checkpoint_final.pth); nnUNet_preprocessed and
nnUNet_extTrainer must be set as for nnUNetv2_predict (``nnunet-mem-cif env``).
"""
import argparse
import copy
import os
from typing import Dict, List

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mem_cif.brats import MODALITIES, REGIONS_NNUNET
from nnunet_mem_cif.checkpoints import read_checkpoint
from nnunet_mem_cif.evaluation import dice
from nnunet_mem_cif.trainers.semi_supervised import SSL_CHECKPOINT_KEY


def tumor_patch(data: np.ndarray, seg: np.ndarray, patch_size) -> tuple:
    """The patch of ``patch_size`` (2d: a slice through the tumor centre) around the tumor's centre, zero-padded
    where it leaves the image (acvl-utils' crop_and_pad_nd)."""
    foreground = np.argwhere(seg[0] > 0)
    centre = foreground.mean(0).round().astype(int) if len(foreground) else np.array(data.shape[1:]) // 2
    if len(patch_size) == 2:  # 2d: one axial slice (nnU-Net's 2d slices along the first spatial axis)
        data, seg = data[:, centre[0]], seg[:, centre[0]]
        centre = centre[1:]
    box = [[int(c) - p // 2, int(c) - p // 2 + p] for c, p in zip(centre, patch_size)]
    return crop_and_pad_nd(data, box).astype(np.float32), crop_and_pad_nd(seg, box).astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold_folder")
    parser.add_argument("--cases", type=int, default=20, help="validation cases to use (default 20)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    fold_folder = os.path.abspath(args.fold_folder)
    model_folder, fold = os.path.dirname(fold_folder), os.path.basename(fold_folder).removeprefix("fold_")
    predictor = nnUNetPredictor(device=torch.device(args.device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold if fold == "all" else int(fold),),
                                                   "checkpoint_final.pth")
    checkpoint = read_checkpoint(os.path.join(fold_folder, "checkpoint_final.pth"), "cpu")
    if SSL_CHECKPOINT_KEY not in checkpoint:
        raise SystemExit(f"{fold_folder}: not a semi-supervised run (no teacher in its checkpoint)")
    if not predictor.label_manager.has_regions:
        raise SystemExit(f"{fold_folder}: trained on labels, not on regions; this diagnostic reads region sigmoids")
    student = predictor.network.eval()
    student.load_state_dict(checkpoint["network_weights"])
    teacher = copy.deepcopy(student)
    teacher.load_state_dict(checkpoint[SSL_CHECKPOINT_KEY]["teacher_weights"])

    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], predictor.plans_manager.dataset_name)
    folder = os.path.join(preprocessed, predictor.configuration_manager.data_identifier)
    splits = load_json(os.path.join(preprocessed, "splits_final.json"))
    keys = sorted(splits[int(fold)]["val"])[:args.cases] if fold != "all" else []
    if not keys:
        raise SystemExit("fold 'all' has no validation cases of its own: give a numbered fold's folder")
    dataset = infer_dataset_class(folder)(folder, keys)
    regions = list(REGIONS_NNUNET)
    rows: Dict[str, List[np.ndarray]] = {}
    with torch.no_grad():
        for key in keys:
            data, seg, _, _ = dataset.load_case(key)
            patch, labels = tumor_patch(np.asarray(data), np.asarray(seg), predictor.configuration_manager.patch_size)
            x = torch.from_numpy(patch)[None].to(args.device)
            target = torch.sigmoid(teacher(x).float())[0]
            reference = [np.isin(labels[0], r) for r in REGIONS_NNUNET.values()]
            for dropped in ["none"] + list(MODALITIES):
                view = x.clone()
                if dropped != "none":
                    view[:, MODALITIES.index(dropped)] = 0
                probabilities = torch.sigmoid(student(view).float())[0]
                squared = ((probabilities - target) ** 2).cpu().numpy()
                prediction = probabilities.cpu().numpy() > 0.5
                values = []
                for i, mask in enumerate(reference):
                    values.append(squared[i][mask].mean() if mask.any() else np.nan)
                values += [dice(prediction[i], mask) for i, mask in enumerate(reference)]
                rows.setdefault(dropped, []).append(np.array(values, float))
    short = {"whole_tumor": "WT", "tumor_core": "TC", "enhancing_tumor": "ET"}
    print(f"{fold_folder}: {len(keys)} validation cases, one tumor-centred patch each; teacher sees every modality")
    print("| student's view | " + " | ".join(f"consistency {short[r]}" for r in regions) + " | "
          + " | ".join(f"Dice {short[r]}" for r in regions) + " |")
    print("|---|" + "---|" * (2 * len(regions)))
    for dropped, values in rows.items():
        mean = np.nanmean(np.stack(values), 0)
        name = "all modalities" if dropped == "none" else f"without {dropped}"
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in mean[:len(regions)]) + " | "
              + " | ".join(f"{v:.3f}" for v in mean[len(regions):]) + " |")


if __name__ == "__main__":
    main()
