"""nnU-Net's real commands on generated data: plan/preprocess -> preprocess-unlabeled -> train -> predict."""
import os
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_workspace import DATASET_ID, DATASET_NAME

pytestmark = pytest.mark.e2e
SSL_LINE = re.compile(r"SSL: supervised loss ([\d.]+), consistency loss ([\d.]+), consistency weight ([\d.]+), "
                      r"unlabeled batches (\d+) this epoch \((\d+) in total\)")


def test_env_prints_a_folder_with_one_reexport_module(workspace):
    output = workspace.run("nnunet-mem-cif", "env").stdout
    line = next(line for line in output.splitlines() if line.startswith("export nnUNet_extTrainer="))
    folder = line.split("=", 1)[1].strip("'\"").split(os.pathsep)[0]
    assert [f for f in os.listdir(folder) if f.endswith(".py")] == ["nnunet_mem_cif_trainers.py"]


def test_semi_supervised_training_and_prediction_through_nnunet_cli(workspace):
    result = workspace.run("nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", "MemCifSemiTrainer_debug",
                           "-device", "cpu")
    epochs = SSL_LINE.findall(result.stdout)
    assert len(epochs) == 2, result.stdout[-3000:]
    # the unlabeled loader fed one batch per training iteration, in every epoch
    assert [int(e[3]) for e in epochs] == [3, 3] and int(epochs[-1][4]) == 6
    # after the ramp-up the consistency term is weighted fully and is not zero
    supervised, consistency, weight = map(float, epochs[-1][:3])
    assert weight == 1.0 and consistency > 0 and supervised > 0
    assert float(epochs[0][2]) < 1.0  # still ramping up in epoch 0

    output_folder = os.path.join(workspace.results, DATASET_NAME,
                                 "MemCifSemiTrainer_debug__nnUNetPlans__3d_fullres", "fold_0")
    assert os.path.isfile(os.path.join(output_folder, "progress.png"))
    checkpoint = torch.load(os.path.join(output_folder, "checkpoint_final.pth"), weights_only=False)
    assert checkpoint["mem_cif_ssl"]["ssl_step"] == 6

    images = os.path.join(workspace.raw, DATASET_NAME, "imagesTs")
    predictions = os.path.join(workspace.root, "predictions")
    workspace.run("nnUNetv2_predict", "-i", images, "-o", predictions, "-d", str(DATASET_ID), "-c", "3d_fullres",
                  "-tr", "MemCifSemiTrainer_debug", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1")
    for case in ("test_000", "test_001"):
        prediction = sitk.ReadImage(os.path.join(predictions, f"{case}.nii.gz"))
        reference = sitk.ReadImage(os.path.join(images, f"{case}_0000.nii.gz"))
        assert prediction.GetSize() == reference.GetSize()
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}


def test_training_without_preprocessed_unlabeled_data_fails_loudly(workspace, tmp_path):
    copy = tmp_path / "preprocessed"
    shutil.copytree(os.path.join(workspace.preprocessed, DATASET_NAME), copy / DATASET_NAME)
    shutil.rmtree(copy / DATASET_NAME / "nnUNetPlans_3d_fullres_unlabeled")
    result = workspace.run("nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", "MemCifSemiTrainer_debug",
                           "-device", "cpu", check=False, nnUNet_preprocessed=str(copy),
                           nnUNet_results=str(tmp_path / "results"))
    assert result.returncode != 0
    assert "UnlabeledDataError" in result.stderr and "nnunet-mem-cif preprocess-unlabeled" in result.stderr
    assert "Epoch 0" not in result.stdout  # it stopped before training, not after a silent fallback


def test_preprocess_unlabeled_reports_user_errors_without_traceback(workspace):
    result = workspace.run("nnunet-mem-cif", "preprocess-unlabeled", "-d", "502", "-c", "3d_fullres", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_preprocess_unlabeled_missing_plans_names_the_fix(workspace):
    os.makedirs(os.path.join(workspace.raw, "Dataset503_NoPlans"), exist_ok=True)
    result = workspace.run("nnunet-mem-cif", "preprocess-unlabeled", "-d", "503", "-c", "3d_fullres", check=False)
    assert result.returncode == 2
    assert "nnUNetv2_plan_and_preprocess -d Dataset503_NoPlans" in result.stderr
