"""Does the evidence table's reading hold on cases no choice has seen? Its paired differences beside the unseen phase's.

The table (experiments/evidence_table/) was read after settings had been chosen on the same phantom; the unseen phase
(experiments/evidence_table/unseen/) re-runs every row on new cases with nothing chosen again. This prints, for the
comparisons docs/results.md reads, the mean Dice difference A - B over (seed, test case) pairs with its 95 % bootstrap
interval in both, side by side (``results_table.paired_difference``, the same as each results.md's own section), so
that a lead which was tuned to the first cases shows as one that shrinks or flips on the new ones.

    python experiments/compare_unseen.py [--region mean|whole_tumor|tumor_core|enhancing_tumor]
"""
import argparse
import os
from typing import List, Optional, Tuple

from nnunet_mem_cif.results_table import METHODS, load_records, paired_difference

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evidence_table")
UNSEEN = os.path.join(TABLE, "unseen")
FRACTIONS = (0.01, 0.05)
# the table's own comparisons (results_table.COMPARISONS) and the ones docs/results.md adds to split the full
# method's difference into network, unlabeled data and CIF
PAIRS = [("memcif", "nnunet"), ("memcif", "mean-teacher"), ("memcif", "self-training"), ("memcif", "no-cif"),
         ("memcif", "memcif-supervised"), ("memcif", "no-mem"), ("no-cif", "nnunet"), ("no-cif", "mean-teacher"),
         ("no-cif", "self-training"), ("memcif-supervised", "nnunet"), ("no-cif", "memcif-supervised"),
         ("no-mem", "nnunet"), ("self-training", "nnunet"), ("mean-teacher", "nnunet"),
         ("self-training", "mean-teacher"), ("memcif-keep-t1ce", "memcif")]


def cell(difference: Optional[Tuple[float, float, float, int]], pairs: int) -> str:
    """``+0.012 [+0.003, +0.021]``; the pair count where it differs from the table's full count, a dash where no
    seed has both runs."""
    if difference is None:
        return "–"
    mean, low, high, n = difference
    text = " ".join([f"{mean:+.3f}", f"[{low:+.3f},", f"{high:+.3f}]"]).replace("-", "−")
    return text if n == pairs else f"{text} ({n} pairs)"


def comparison_table(region: str = "mean") -> List[str]:
    """Markdown rows: A - B at 1 and 5 %, first table then unseen cases."""
    phases = [load_records(TABLE), load_records(UNSEEN)]
    for folder, records in zip((TABLE, UNSEEN), phases):
        if not records:
            raise SystemExit(f"no run.json under {folder}/runs: run experiments/evidence_table.sh first")
    pairs = max(len({r["seed"] for r in phases[0]}), 1) * len(
        next(iter(r["case_dice"] for r in phases[0] if r.get("case_dice"))))
    lines = ["| A − B | 1 %, first table | 1 %, unseen cases | 5 %, first table | 5 %, unseen cases |",
             "|---|---|---|---|---|"]
    for a, b in PAIRS:
        cells = [cell(paired_difference(records, a, b, fraction, region), pairs)
                 for fraction in FRACTIONS for records in phases]
        lines.append(f"| {METHODS[a].row} − {METHODS[b].row} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--region", default="mean", choices=["mean", "whole_tumor", "tumor_core", "enhancing_tumor"],
                        help="Dice of this region (mean: over WT / TC / ET)")
    args = parser.parse_args()
    print("\n".join(comparison_table(args.region)))


if __name__ == "__main__":
    main()
