"""Why a results table looks as it does, from training-side information only (never tuned on the test cases).

Reads a finished ``nnunet-mem-cif table`` folder (its runs/ hold nnU-Net's results folders) and prints, per run:

1. the test Dice beside nnU-Net's own fold validation Dice (held-out *training* cases, ``validation/summary.json``):
   two independent held-out sets; where the methods' order flips between them, their differences are noise;
2. for the semi-supervised rows: the last epochs' supervised loss, consistency loss and consistency weight (from
   the checkpoint's training log): how much the unlabeled term weighs against the labeled one;
3. for MEM + CIF networks: how far CIF moved from its initialisation in ``checkpoint_final.pth`` (mixing logits
   start at 0, a uniform mixture over the other modalities; gate biases at -2, sigmoid 0.12): a CIF that barely
   moved cannot explain a difference.

    python experiments/diagnose_table.py WORK/table          # WORK as given to experiments/phantom_table.sh
    python experiments/diagnose_table.py --checkpoint FOLD_FOLDER/checkpoint_final.pth   # any one training, e.g. the
                                                                                        # demo's: CIF per stage
"""
import argparse
import json
import os
import statistics
import sys
from typing import List, Optional, Tuple

import torch

from nnunet_mem_cif.architectures.cif import INITIAL_GATE_BIAS, ComplementaryInformationFusion
from nnunet_mem_cif.results_table import METHODS, Run, fold_folder, load_records
from nnunet_mem_cif.checkpoints import read_checkpoint

LAST_EPOCHS = 3


def run_fold_folder(output_dir: str, record: dict) -> Optional[str]:
    """The run's nnU-Net fold folder; None where only its run.json is here (copied from another table)."""
    fold = fold_folder(Run.of_record(record).folder(output_dir), record["dataset"], record["trainer"],
                       record["fold"], record["configuration"])
    return fold if os.path.isdir(fold) else None


def validation_dice(fold: str) -> Optional[float]:
    summary = os.path.join(fold, "validation", "summary.json")
    if not os.path.isfile(summary):
        return None
    with open(summary) as f:
        return json.load(f)["foreground_mean"]["Dice"]


def last_epochs_mean(log: dict, key: str) -> Optional[float]:
    values = log.get(key) or []
    return statistics.mean(values[-LAST_EPOCHS:]) if values else None


def cif_stage_drift(weights: dict) -> List[Tuple[float, float, float]]:
    """Per encoder stage with CIF: (largest change of a mixing weight from the uniform start, mean and largest
    absolute change of the gate biases from their initial value)."""
    stages = sorted({k.rsplit(".", 1)[0] for k in weights if k.startswith("encoder.cif.")},
                    key=lambda stage: int(stage.rsplit(".", 1)[1]))
    drift = []
    for stage in stages:
        state = {k[len(stage) + 1:]: v.float() for k, v in weights.items() if k.startswith(stage + ".")}
        num_modalities, channels = state["gate_weight_self"].shape[:2]
        fresh = ComplementaryInformationFusion(num_modalities, channels)  # the state training started from
        trained = ComplementaryInformationFusion(num_modalities, channels)
        trained.load_state_dict(state)
        with torch.no_grad():
            bias_change = trained.gate_bias - fresh.gate_bias
            drift.append(((trained.mixing_weights() - fresh.mixing_weights()).abs().max().item(),
                          bias_change.mean().item(), bias_change.abs().max().item()))
    return drift


def cif_drift(weights: dict) -> Optional[str]:
    """Largest deviation of the mixing weights from uniform and mean gate-bias change, over the encoder stages."""
    drift = cif_stage_drift(weights)
    if not drift:
        return None
    return (f"mixing {max(d[0] for d in drift):.3f} from uniform (max), "
            f"gate bias {statistics.mean(d[1] for d in drift):+.3f} from "
            f"{INITIAL_GATE_BIAS:g} (mean)")


def print_checkpoint(path: str) -> int:
    """CIF per stage of one training's checkpoint: did mixing and gates leave their initial values?"""
    checkpoint = read_checkpoint(path, "cpu")
    drift = cif_stage_drift(checkpoint["network_weights"])
    if not drift:
        print(f"{path}: the network has no CIF", file=sys.stderr)
        return 1
    print(f"{path} ({checkpoint.get('trainer_name')}, epoch {checkpoint.get('current_epoch')}): CIF against its "
          f"initial state (mixing weights uniform, gate bias {INITIAL_GATE_BIAS:g})")
    print("| encoder stage | mixing weight change (max) | gate bias change (mean) | gate bias change (max abs) |")
    print("|---|---|---|---|")
    for stage, (mixing, bias_mean, bias_max) in enumerate(drift):
        print(f"| {stage} | {mixing:.4f} | {bias_mean:+.4f} | {bias_max:.4f} |")
    return 0


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", nargs="?", help="the --output-dir of nnunet-mem-cif table")
    parser.add_argument("--checkpoint", help="instead: one checkpoint of a MemCifUNet trainer")
    args = parser.parse_args()
    if args.checkpoint:
        return print_checkpoint(args.checkpoint)
    if not args.output_dir:
        parser.error("give a table output folder or --checkpoint")
    records = load_records(args.output_dir)
    if not records:
        print(f"no finished runs in {args.output_dir}/runs", file=sys.stderr)
        return 1
    print(f"Diagnostics of {os.path.basename(os.path.abspath(args.output_dir))}: test Dice (held-out test cases) "
          f"beside nnU-Net's fold validation Dice (held-out training cases); losses are the mean of the last "
          f"{LAST_EPOCHS} epochs.\n")
    print("| labeled | method | seed | test Dice (mean) | validation Dice (mean) | supervised loss | consistency loss "
          "| consistency weight | CIF after training |")
    print("|---|---|---|---|---|---|---|---|---|")
    for record in records:
        row = f"| {record['labeled_fraction']:.0%} | {METHODS[record['method']].row} | {record['seed']} " \
              f"| {fmt(record['mean']['mean']['dice'])} "
        fold = run_fold_folder(args.output_dir, record)
        if fold is None:
            print(row + "| (only run.json here) | | | | |")
            continue
        checkpoint = read_checkpoint(os.path.join(fold, "checkpoint_final.pth"), "cpu")  # weights_only=True
        log = checkpoint["logging"]
        print(row + f"| {fmt(validation_dice(fold))} | {fmt(last_epochs_mean(log, 'train_sup_losses'))} "
              f"| {fmt(last_epochs_mean(log, 'train_cons_losses'), 4)} "
              f"| {fmt(last_epochs_mean(log, 'cons_weights'), 2)} "
              f"| {cif_drift(checkpoint['network_weights']) or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
