"""nnU-Net's real commands on generated data: plan/preprocess -> preprocess-unlabeled -> train -> predict."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

from nnunet_mem_cif.discovery import console_script
from nnunet_mem_cif.evaluation import missed_regions
from .nnunet_workspace import DATASET_ID, DATASET_NAME

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

    output_folder = os.path.join(workspace.results, DATASET_NAME, convert_trainer_plans_config_to_identifier(
        "MemCifSemiTrainer_debug", "nnUNetPlans", "3d_fullres"), "fold_0")
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
    assert "nnunet-mem-cif: error:" in result.stderr and "nnunet-mem-cif preprocess-unlabeled" in result.stderr
    assert "Traceback" not in result.stderr  # a user error, said in one line
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


def test_demo_runs_the_whole_workflow(tmp_path):
    """The README's main job, at a coarse spacing so that it fits CI (about 3 minutes on 2 cores)."""
    workdir = tmp_path / "demo"
    result = subprocess.run([console_script("nnunet-mem-cif"), "demo", "--workdir", str(workdir), "--cases", "8",
                             "--spacing", "8", "--device", "cpu"], capture_output=True, text=True, timeout=1200,
                            env=dict(os.environ, nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| whole_tumor |" in result.stdout
    metrics = json.load(open(workdir / "results" / "metrics.json"))
    assert set(metrics["mean"]) == {"whole_tumor", "tumor_core", "enhancing_tumor", "mean"}
    assert len(metrics["cases"]) == 2
    for region in metrics["mean"]:  # a region never found is named after the table, and only then
        assert (f"{region} was not found in any test case" in result.stdout) == (region in missed_regions(metrics))
    assert (workdir / "results" / "progress.png").is_file()
    assert len(list((workdir / "results" / "overlays").glob("*.png"))) == 2
    train_log = (workdir / "logs" / "train.log").read_text()
    assert train_log.count("SSL: supervised loss") == 10  # every epoch logged, unbuffered, into the demo's log


def test_killed_training_resumes_with_identical_state(workspace, tmp_path, monkeypatch):
    """Kill nnUNetv2_train during epoch 1, then ``--c``: student, teacher, optimizer and ramp-up come back."""
    import signal
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from .nnunet_workspace import make_trainer
    results = str(tmp_path / "results")
    command = [console_script("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "1", "-tr", "MemCifSemiTrainer_debug",
               "-device", "cpu"]
    env = dict(workspace.env, nnUNet_results=results, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.search(r"Epoch 1\s*$", line):  # epoch 0's checkpoint is written, epoch 1 has started
            os.killpg(process.pid, signal.SIGKILL)  # with nnU-Net's data-augmentation workers
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen[-30:])

    workspace.set_environment(monkeypatch)
    monkeypatch.setenv("nnUNet_results", results)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = make_trainer("MemCifSemiTrainer_debug", fold=1)
    maybe_load_checkpoint(trainer, True, False, None)  # what nnUNetv2_train --c does
    saved = torch.load(os.path.join(trainer.output_folder, "checkpoint_best.pth"), weights_only=False)
    for key, value in trainer.network.state_dict().items():
        assert torch.equal(value, saved["network_weights"][key]), key
    for key, value in trainer.teacher.module.state_dict().items():
        assert torch.equal(value, saved["mem_cif_ssl"]["teacher_weights"][key]), key
    for index, state in trainer.optimizer.state_dict()["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, saved["optimizer_state"]["state"][index][name]), (index, name)
    assert trainer.current_epoch == 1 and trainer.ssl_step == 3  # ramp-up continues where epoch 0 ended

    resumed = workspace.run(*(["nnUNetv2_train"] + command[1:] + ["--c"]), nnUNet_results=results)
    epochs = SSL_LINE.findall(resumed.stdout)
    assert len(epochs) == 1 and int(epochs[0][3]) == 3 and int(epochs[0][4]) == 6
