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

from nnunet_mem_cif.results_table import COMPARISONS, METHODS, REGIONS, interval_text, load_records, \
    paired_difference

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evidence_table")
UNSEEN = os.path.join(TABLE, "unseen")
FRACTIONS = (0.01, 0.05)
# the table's own comparisons and the ones docs/results.md adds to split the full method's difference into network,
# unlabeled data and CIF; a comparison without runs in either phase is left out
PAIRS = COMPARISONS + (("memcif-supervised", "nnunet"), ("no-cif", "memcif-supervised"),
                       ("self-training", "mean-teacher"))


def cell(difference: Optional[Tuple[float, float, float, int]], pairs: int) -> str:
    """``+0.012 [+0.003, +0.021]``; the pair count where it is below the table's full count, a dash where no seed
    has both runs."""
    if difference is None:
        return "–"
    text = interval_text(difference).replace("-", "−")
    return text if difference[3] == pairs else f"{text} ({difference[3]} pairs)"


def comparison_table(region: str = "mean") -> List[str]:
    """Markdown rows: A - B at 1 and 5 %, first table then unseen cases."""
    phases = [load_records(TABLE), load_records(UNSEEN)]
    for folder, records in zip((TABLE, UNSEEN), phases):
        if not records:
            raise SystemExit(f"no run.json under {folder}/runs: run experiments/evidence_table.sh first")
    differences = {(a, b): [paired_difference(records, a, b, fraction, region)
                            for fraction in FRACTIONS for records in phases] for a, b in PAIRS}
    differences = {pair: found for pair, found in differences.items() if any(found)}
    pairs = max(d[3] for found in differences.values() for d in found if d)  # every seed x every test case
    lines = ["| A − B | 1 %, first table | 1 %, unseen cases | 5 %, first table | 5 %, unseen cases |",
             "|---|---|---|---|---|"]
    for (a, b), found in differences.items():
        lines.append(f"| {METHODS[a].row} − {METHODS[b].row} | " + " | ".join(cell(d, pairs) for d in found) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--region", default="mean", choices=REGIONS,
                        help="Dice of this region (mean: over WT / TC / ET)")
    args = parser.parse_args()
    print("\n".join(comparison_table(args.region)))


if __name__ == "__main__":
    main()
