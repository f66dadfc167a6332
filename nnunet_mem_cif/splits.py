"""Hidden-label mode: keep a seeded fraction of the labeled training cases labeled, use the rest as unlabeled."""
from typing import List, Sequence, Tuple

import numpy as np


def split_labeled_fraction(case_ids: Sequence[str], fraction: float, seed: int) -> Tuple[List[str], List[str]]:
    """Return (labeled, unlabeled), both sorted. At least one case stays labeled.

    The draw depends only on the sorted case ids, the fraction and the seed, so runs, methods and machines that
    share these share the subset.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    ids = sorted(case_ids)
    if not ids:
        raise ValueError("no training cases to split")
    num_labeled = max(1, int(round(fraction * len(ids))))
    chosen = set(np.random.RandomState(seed).choice(len(ids), num_labeled, replace=False).tolist())
    labeled = [c for i, c in enumerate(ids) if i in chosen]
    unlabeled = [c for i, c in enumerate(ids) if i not in chosen]
    return labeled, unlabeled
