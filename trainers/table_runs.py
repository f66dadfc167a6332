"""The rows of the paper's table (docs/design.md §4) as ``nnunet-mem-cif table`` trains them.

nnUNetv2_train has no flags for a labeled fraction, a schedule or a seed, so the command passes them in the
environment variable ``NNUNET_MEM_CIF_TABLE_RUN`` (JSON); these trainers refuse to start without it. Everything
else is the trainer of the row: the same code a user trains with.
"""
import json
import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.trainers.ablations import MemCifSemiTrainer_keepT1ce, MemCifSemiTrainer_maskT1ce, \
    MemCifSemiTrainer_noCIF, MemCifSemiTrainer_noMEM
from nnunet_mem_cif.trainers.atomic_checkpoints import AtomicCheckpointsMixin
from nnunet_mem_cif.trainers.baselines import MeanTeacherTrainer
from nnunet_mem_cif.trainers.hidden_labels import HiddenLabelsMixin
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer
from nnunet_mem_cif.trainers.memcif_trainer import MemCifTrainer

TABLE_RUN_VARIABLE = "NNUNET_MEM_CIF_TABLE_RUN"
TABLE_RUN_KEYS = ("labeled_fraction", "epochs", "iterations_per_epoch", "seed")


def table_run_setting() -> dict:
    """The run's setting from ``NNUNET_MEM_CIF_TABLE_RUN``; one clear error if it is missing or incomplete."""
    raw = os.environ.get(TABLE_RUN_VARIABLE)
    if not raw:
        raise PluginUserError(f"the *_table trainers are run by 'nnunet-mem-cif table', which sets "
                              f"{TABLE_RUN_VARIABLE}; to train a labeled fraction yourself use e.g. "
                              f"MemCifSemiTrainer_10pct")
    try:
        setting = json.loads(raw)
        missing = [k for k in TABLE_RUN_KEYS if k not in setting]
    except (json.JSONDecodeError, TypeError) as e:
        raise PluginUserError(f"{TABLE_RUN_VARIABLE} is not valid JSON ({e}): {raw[:200]}") from e
    if missing:
        raise PluginUserError(f"{TABLE_RUN_VARIABLE} lacks {', '.join(missing)}: {raw[:200]}")
    return setting


class TableRun(AtomicCheckpointsMixin):
    """Mixin, first base: labeled fraction, schedule and seed of one table run. The seed picks the labeled
    cases (the same for every method at that fraction) and seeds torch and numpy before the network is built.
    Validation iterations per epoch scale with the schedule as nnU-Net's defaults do (50 per 250). Optional
    ``mem_lr_multiplier`` / ``cif_lr_multiplier`` keys override the MEM/CIF rows' multipliers and
    ``consistency_weight`` the semi-supervised rows' (settings chosen on validation folds: docs/results.md). An
    optional ``batch_size`` replaces the plans' for every row alike (a CPU table's setting), ``disable_tta``
    predicts the fold's validation cases without mirroring (as ``nnUNetv2_predict --disable_tta`` does the test
    cases), and ``pseudo_labeled_folder`` points self-training's second stage at the preprocessed cases whose
    labels the first stage predicted."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        setting = table_run_setting()
        torch.manual_seed(setting["seed"])
        np.random.seed(setting["seed"])
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.labeled_fraction = float(setting["labeled_fraction"])
        self.labeled_subset_seed = int(setting["seed"])
        self.num_epochs = int(setting["epochs"])
        self.num_iterations_per_epoch = int(setting["iterations_per_epoch"])
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.save_every = 1  # a table outlives a session: an interrupted run resumes at its last epoch (--c)
        for key, attribute, lacks in (("mem_lr_multiplier", "mem_lr_multiplier", "MEM/CIF optimizer groups"),
                                      ("cif_lr_multiplier", "cif_lr_multiplier", "MEM/CIF optimizer groups"),
                                      ("consistency_weight", "consistency_weight_max", "consistency loss")):
            if key in setting:
                if not hasattr(self, attribute):
                    raise PluginUserError(f"{type(self).__name__} has no {lacks}: {key} does not apply to it")
                setattr(self, attribute, float(setting[key]))
        self.disable_tta = bool(setting.get("disable_tta", False))
        if "batch_size" in setting:  # nnU-Net reads it from the configuration in initialize()
            self.configuration_manager.configuration["batch_size"] = int(setting["batch_size"])
        if "pseudo_labeled_folder" in setting:
            if not isinstance(self, PseudoLabelsMixin):
                raise PluginUserError(f"{type(self).__name__} does not train on pseudo-labels: pseudo_labeled_folder "
                                      f"does not apply to it")
            self.preprocessed_dataset_folder = setting["pseudo_labeled_folder"]
        elif isinstance(self, PseudoLabelsMixin):
            raise PluginUserError(f"{type(self).__name__} needs pseudo_labeled_folder in {TABLE_RUN_VARIABLE}: "
                                  f"'nnunet-mem-cif table --methods self-training' makes it")

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation; without mirroring where the table predicts without it (``disable_tta``), so
        that validation and test cases are predicted alike. The checkpoint keeps nnU-Net's mirroring axes."""
        if not self.disable_tta:
            return super().perform_actual_validation(save_probabilities)
        axes, self.inference_allowed_mirroring_axes = self.inference_allowed_mirroring_axes, None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes


class PseudoLabelsMixin:
    """Self-training's second stage (nnU-Net's advice for unlabeled data: train, predict the unlabeled cases,
    retrain on both): the fold's labeled cases plus its hidden-label cases, whose labels in the preprocessed folder
    the table replaced by the first stage's predictions. Validation cases stay nnU-Net's, with their own labels."""

    def do_split(self):
        labeled, val_keys = super().do_split()
        if not self.hidden_label_keys:
            raise PluginUserError(f"{type(self).__name__}: no hidden-label case to pseudo-label at labeled fraction "
                                  f"{self.labeled_fraction}")
        return sorted(labeled + self.hidden_label_keys), val_keys


class nnUNetTrainer_table(TableRun, HiddenLabelsMixin, nnUNetTrainer):
    """Supervised nnU-Net: nnU-Net's own trainer and PlainConvUNet on the labeled fraction only."""


class nnUNetTrainer_selftraining_table(TableRun, PseudoLabelsMixin, HiddenLabelsMixin, nnUNetTrainer):
    """Self-training: nnU-Net's own trainer on the labeled and the pseudo-labeled cases."""


class MeanTeacherTrainer_table(TableRun, MeanTeacherTrainer):
    """Mean Teacher with nnU-Net's PlainConvUNet."""


class MemCifTrainer_table(TableRun, HiddenLabelsMixin, MemCifTrainer):
    """MEM + CIF network, supervised on the labeled fraction only."""


class MemCifSemiTrainer_noMEM_table(TableRun, MemCifSemiTrainer_noMEM):
    """Full method without MEM."""


class MemCifSemiTrainer_noCIF_table(TableRun, MemCifSemiTrainer_noCIF):
    """Full method without CIF."""


class MemCifSemiTrainer_keepT1ce_table(TableRun, MemCifSemiTrainer_keepT1ce):
    """The full method whose strong view never drops T1ce."""


class MemCifSemiTrainer_maskT1ce_table(TableRun, MemCifSemiTrainer_maskT1ce):
    """The full method whose student is not asked for tumor core and enhancing tumor where its view lacks T1ce."""


class MemCifSemiTrainer_table(TableRun, MemCifSemiTrainer):
    """The full method."""
