"""The six rows of the paper's table (docs/design.md §4) as ``nnunet-mem-cif benchmark`` trains them.

nnUNetv2_train has no flags for a labeled fraction, a schedule or a seed, so the command passes them in the
environment variable ``NNUNET_MEM_CIF_BENCHMARK`` (JSON); these trainers refuse to start without it. Everything
else is the trainer of the row: the same code a user trains with.
"""
import json
import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.trainers.ablations import MemCifSemiTrainer_noCIF, MemCifSemiTrainer_noMEM
from nnunet_mem_cif.trainers.baselines import MeanTeacherTrainer
from nnunet_mem_cif.trainers.labeled_subset import LabeledSubsetMixin
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer
from nnunet_mem_cif.trainers.memcif_trainer import MemCifTrainer_noSSL

BENCHMARK_VARIABLE = "NNUNET_MEM_CIF_BENCHMARK"
BENCHMARK_KEYS = ("labeled_fraction", "epochs", "iterations_per_epoch", "seed")


def benchmark_setting() -> dict:
    """The run's setting from ``NNUNET_MEM_CIF_BENCHMARK``; one clear error if it is missing or incomplete."""
    raw = os.environ.get(BENCHMARK_VARIABLE)
    if not raw:
        raise PluginUserError(f"the *_benchmark trainers are run by 'nnunet-mem-cif benchmark', which sets "
                              f"{BENCHMARK_VARIABLE}; to train a labeled fraction yourself use e.g. "
                              f"MemCifSemiTrainer_10pct")
    try:
        setting = json.loads(raw)
        missing = [k for k in BENCHMARK_KEYS if k not in setting]
    except (json.JSONDecodeError, TypeError) as e:
        raise PluginUserError(f"{BENCHMARK_VARIABLE} is not valid JSON ({e}): {raw[:200]}") from e
    if missing:
        raise PluginUserError(f"{BENCHMARK_VARIABLE} lacks {', '.join(missing)}: {raw[:200]}")
    return setting


class BenchmarkRun:
    """Mixin, first base: labeled fraction, schedule and seed of one benchmark run. The seed picks the labeled
    cases (the same for every method at that fraction) and seeds torch and numpy before the network is built.
    Validation iterations per epoch scale with the schedule as nnU-Net's defaults do (50 per 250). Optional
    ``mem_lr_multiplier`` / ``cif_lr_multiplier`` keys override the MEM/CIF rows' multipliers
    (benchmarks/choose_fusion_lr.py compares them on validation folds)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        setting = benchmark_setting()
        torch.manual_seed(setting["seed"])
        np.random.seed(setting["seed"])
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.labeled_fraction = float(setting["labeled_fraction"])
        self.labeled_subset_seed = int(setting["seed"])
        self.num_epochs = int(setting["epochs"])
        self.num_iterations_per_epoch = int(setting["iterations_per_epoch"])
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        for key in ("mem_lr_multiplier", "cif_lr_multiplier"):
            if key in setting:
                if not hasattr(self, key):
                    raise PluginUserError(f"{type(self).__name__} has no MEM/CIF optimizer groups: {key} does not "
                                          f"apply to it")
                setattr(self, key, float(setting[key]))


class nnUNetTrainer_benchmark(BenchmarkRun, LabeledSubsetMixin, nnUNetTrainer):
    """Supervised nnU-Net: nnU-Net's own trainer and PlainConvUNet on the labeled fraction only."""


class MeanTeacherTrainer_benchmark(BenchmarkRun, MeanTeacherTrainer):
    """Mean Teacher with nnU-Net's PlainConvUNet."""


class MemCifTrainer_noSSL_benchmark(BenchmarkRun, LabeledSubsetMixin, MemCifTrainer_noSSL):
    """MEM + CIF network, supervised on the labeled fraction only."""


class MemCifSemiTrainer_noMEM_benchmark(BenchmarkRun, MemCifSemiTrainer_noMEM):
    """Full method without MEM."""


class MemCifSemiTrainer_noCIF_benchmark(BenchmarkRun, MemCifSemiTrainer_noCIF):
    """Full method without CIF."""


class MemCifSemiTrainer_benchmark(BenchmarkRun, MemCifSemiTrainer):
    """The full method."""
