"""Do MEM and CIF learn at the convolutions' pace? Relative update per step of each family of parameters, measured
over real training steps of a trainer with its own optimizer.

SGD with momentum moves a parameter by about ``lr * grad / (1 - momentum)`` per step, so ``|delta p| / |p|`` per step
says how many steps a family of parameters needs to change noticeably; if MEM or CIF move orders of magnitude slower
than the convolutions, they stay near their initialisation for the whole schedule. This script trains a
MemCifSemiTrainer (nnU-Net's data loading, augmentation, loss, optimizer and schedule, plus this plugin's unlabeled
term) on a small phantom dataset for ``--steps`` steps, once per ``--multipliers`` setting (``MEM:CIF``, the
trainer's ``mem_lr_multiplier`` and ``cif_lr_multiplier``; a single number sets both), and prints per family the
median over its tensors of ``|delta p| / |p|``, averaged over the steps, and its ratio to the convolutions'. CIF's
mixing logits start at zero, so for them the relative change of the mixing weights (the softmax, a uniform 1/(M-1)
at the start) is shown.

    python experiments/gradient_scale.py [--workdir gradient_scale_work] [--steps 10] [--multipliers 1 30 100 30:150]

The phantom dataset (20 cases at 4 mm, 10 % labeled, as the demo) is made and planned on the first run and reused.
"""
import argparse
import os
import statistics
import sys
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from nnunet_mem_cif.architectures import ComplementaryInformationFusion, ModalitySpecificEnhancement
from nnunet_mem_cif.demo import DEMO_DATASET_NAME
from nnunet_mem_cif.nnunet_commands import nnunet_environment, prepare_phantom_dataset
from nnunet_mem_cif.results_table import parse_lr_multipliers

DATASET_ID = 991
CONFIGURATION = "3d_fullres"
CONVOLUTIONS = "convolutions (encoder, decoder, fused skips)"


def label(multipliers: Tuple[float, float]) -> str:
    return f"{multipliers[0]:g}:{multipliers[1]:g}"


def families(network: nn.Module) -> Dict[str, List[Callable[[], torch.Tensor]]]:
    """Family name -> functions returning the current value of each tensor that belongs to it."""
    groups = defaultdict(list)
    for module in network.modules():
        if isinstance(module, ModalitySpecificEnhancement):  # weights: biases start at 0, as the convolutions'
            groups["MEM (channel attention)"] += [lambda p=c.weight: p for c in (module.squeeze, module.excite)]
        elif isinstance(module, ComplementaryInformationFusion):
            groups["CIF gate weights"] += [lambda p=p: p for p in (module.gate_weight_self, module.gate_weight_other)]
            groups["CIF gate bias"].append(lambda m=module: m.gate_bias)
            groups["CIF mixing weights (softmax of the logits)"].append(lambda m=module: m.mixing_weights())
    fusion = {id(p) for module in network.modules()
              if isinstance(module, (ModalitySpecificEnhancement, ComplementaryInformationFusion))
              for p in module.parameters()}
    groups[CONVOLUTIONS] = [lambda p=m.weight: p for m in network.modules()  # weights: biases start at 0
                            if isinstance(m, nn.modules.conv._ConvNd) and id(m.weight) not in fusion]
    return dict(groups)


def relative_updates(trainer, steps: int) -> Dict[str, List[float]]:
    """Per family, per step: the median over its tensors of |p_after - p_before| / |p_before|."""
    network = trainer._student_module() if hasattr(trainer, "_student_module") else trainer.network
    tensors = families(network)
    per_step = defaultdict(list)
    for _ in range(steps):
        with torch.no_grad():
            before = {name: [get().detach().clone() for get in getters] for name, getters in tensors.items()}
        trainer.train_step(next(trainer.dataloader_train))
        with torch.no_grad():
            for name, getters in tensors.items():
                ratios = [((get() - old).norm() / old.norm()).item() for get, old in zip(getters, before[name])]
                per_step[name].append(statistics.median(ratios))
    return per_step


def measure(multipliers: Tuple[float, float], steps: int, fold) -> Dict[str, float]:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_mem_cif.trainers import MemCifSemiTrainer

    # this process only: the class attributes the trainer reads
    MemCifSemiTrainer.mem_lr_multiplier, MemCifSemiTrainer.cif_lr_multiplier = multipliers
    trainer = get_trainer_from_args(maybe_convert_to_dataset_name(DATASET_ID), CONFIGURATION, fold,
                                    "MemCifSemiTrainer", device=torch.device("cpu"))
    torch.manual_seed(0)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    try:
        per_step = relative_updates(trainer, steps)
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val, trainer.dataloader_unlabeled):
            if hasattr(loader, "_finish"):
                loader._finish()
    return {name: statistics.mean(values) for name, values in per_step.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="gradient_scale_work")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--multipliers", type=parse_lr_multipliers, nargs="+",
                        default=[(1.0, 1.0), (30.0, 30.0), (100.0, 100.0), (30.0, 150.0)], help="MEM:CIF settings")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    workdir = os.path.abspath(args.workdir)
    env = nnunet_environment(workdir, "cpu")
    os.environ.update(env)
    dataset_folder = os.path.join(env["nnUNet_preprocessed"], f"Dataset{DATASET_ID:03d}_{DEMO_DATASET_NAME}")
    if not os.path.isfile(os.path.join(dataset_folder, "nnUNetPlans.json")):
        prepare_phantom_dataset(workdir, DATASET_ID, DEMO_DATASET_NAME, 20, 4.0, 0.1, 0.2, 0, env)
    os.environ["nnUNet_n_proc_DA"] = "0"  # training batches from this process: no workers, reproducible batches
    results = {m: measure(m, args.steps, "all") for m in args.multipliers}
    print(f"\nMemCifSemiTrainer on the phantom dataset of {workdir} (3d_fullres, fold all), CPU, {args.steps} "
          f"training steps from a fresh network; per family: mean over the steps of the median over its tensors of "
          f"|delta p| / |p|, and its ratio to the convolutions'")
    names = [n for n in next(iter(results.values())) if n != CONVOLUTIONS]
    print("| multipliers MEM:CIF | convolutions | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for multiplier, values in results.items():
        base = values[CONVOLUTIONS]
        cells = [f"{values[n]:.1e} ({values[n] / base:.2f}x)" for n in names]
        print(f"| {label(multiplier)} | {base:.1e} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
