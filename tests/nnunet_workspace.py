"""An nnU-Net workspace (raw / preprocessed / results) for the tests, and ways to run nnU-Net in it."""
import os
import subprocess

import torch

from nnunet_mem_cif.discovery import console_script, ext_trainer_value

DATASET_ID = 501
DATASET_NAME = "Dataset501_SynthBraTS"
NNUNET_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_compile", "nnUNet_n_proc_DA",
                    "nnUNet_def_n_proc", "nnUNet_extTrainer")


class Workspace:
    def __init__(self, root: str):
        self.root = root
        self.raw = os.path.join(root, "nnUNet_raw")
        self.preprocessed = os.path.join(root, "nnUNet_preprocessed")
        self.results = os.path.join(root, "nnUNet_results")
        self.env = dict(os.environ, nnUNet_raw=self.raw, nnUNet_preprocessed=self.preprocessed,
                        nnUNet_results=self.results, nnUNet_compile="0", nnUNet_n_proc_DA="1",
                        nnUNet_def_n_proc="1",
                        nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")))

    def run(self, *args: str, check: bool = True, timeout: int = 900, **env_overrides: str):
        """Run one of nnU-Net's / this plugin's console scripts in the workspace's environment."""
        result = subprocess.run([console_script(args[0]), *args[1:]], env=dict(self.env, **env_overrides),
                                cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                                 f"{result.stderr[-4000:]}")
        return result

    def set_environment(self, monkeypatch) -> None:
        """For in-process tests: nnU-Net reads its paths from the environment when it uses them."""
        for key in NNUNET_VARIABLES:
            monkeypatch.setenv(key, self.env[key])


def make_trainer(name: str, fold: int = 0):
    """A trainer created in-process through nnU-Net's own lookup, as nnUNetv2_train creates it."""
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(DATASET_ID), "3d_fullres", fold, name, device=torch.device("cpu"))


def private_copy(workspace: Workspace, root: str, monkeypatch) -> Workspace:
    """The workspace's raw and preprocessed dataset copied under ``root``, the environment pointed there: for tests
    that change data (the session's workspace is shared and never modified in place)."""
    import shutil
    copy = Workspace(root)
    for source, target in ((workspace.raw, copy.raw), (workspace.preprocessed, copy.preprocessed)):
        shutil.copytree(os.path.join(source, DATASET_NAME), os.path.join(target, DATASET_NAME))
    copy.set_environment(monkeypatch)
    return copy
