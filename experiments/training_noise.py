"""How far training one setting again moves its Dice (docs/results.md, "Training noise, measured"): the trainings
of one setting on the same data with the same seed differ, because CPU training is not bit-reproducible (nnU-Net's
augmentation workers are not deterministic). The report gives each training's validation and test Dice, their
spread over the trainings, and every pair's paired difference over the test cases: the interval a comparison of one
run against one run shows where nothing but the training differs. A margin between two rows of the table is read
against it (phase "retrain" of experiments/evidence_table.sh).

    python experiments/training_noise.py REPORT NAME=RUN_DIR NAME=RUN_DIR [NAME=RUN_DIR ...] [--table TABLE_DIR]

With ``--table``, the table's target comparisons at the trainings' labeled fraction (the full method against each
row of results_table.TARGET) are shown twice: with the table's interval, which resamples (seed, test case) pairs
and so treats a run's training as fixed, and with that interval widened by the training noise measured here.

Each RUN_DIR is a finished table run's folder (its run.json and metrics.json are all that is read); all of them
must be one setting: same row, options, labeled cases, seed, schedule and test cases. Writes REPORT (markdown).
"""
import argparse
import itertools
import json
import math
import os
import statistics
import sys
from typing import List

from nnunet_mem_cif.atomic import write_text_atomically
from nnunet_mem_cif.results_table import METHODS, REGION_SHORT, REGIONS, TARGET, case_dice, interval_text, \
    load_records, method_options, paired_difference

Z95 = 1.96  # a normal 95 % interval's half-width in standard errors
# what makes two runs one setting: the rest of run.json (times, versions, command, scores) may differ
SAME = ("method", "labeled_fraction", "seed", "epochs", "iterations_per_epoch", "batch_size", "labeled_cases",
        "test_cases", "dataset", "configuration", "fold")


def load_training(name: str, run_dir: str) -> dict:
    record_file = os.path.join(run_dir, "run.json")
    if not os.path.isfile(record_file) or not case_dice(run_dir):
        sys.exit(f"{run_dir}: no finished table run (run.json and metrics.json): give a run folder the table wrote")
    with open(record_file) as f:
        record = json.load(f)
    return {**record, "name": name, "folder": run_dir, "case_dice": case_dice(run_dir)}


def check_one_setting(trainings: List[dict]) -> None:
    first = trainings[0]
    for t in trainings[1:]:
        differing = [k for k in SAME if t.get(k) != first.get(k)]
        if method_options(t) != method_options(first):
            differing.append("options")
        if differing:
            sys.exit(f"{t['folder']} is not {first['folder']}'s setting ({', '.join(differing)} differ): give runs "
                     f"of one setting")


def report(trainings: List[dict]) -> List[str]:
    first = trainings[0]
    regions = [r for r in REGIONS if r != "mean"]
    lines = [f"# Training one setting again: {first['row']}, {first['labeled_fraction']:.0%} labeled, seed "
             f"{first['seed']}, {first['epochs']} x {first['iterations_per_epoch']} "
             f"({' '.join(method_options(first)) or 'trainers defaults'})", "",
             f"Same data, labeled cases, setting and seed in every training; {first['validation_cases']} fold "
             f"validation cases, {len(first['test_cases'])} test cases.", "",
             "| training | validation Dice | test Dice (mean) | " + " | ".join(REGION_SHORT[r] for r in regions)
             + " | train min |", "|---|---|---|" + "---|" * len(regions) + "---|"]
    for t in trainings:
        mean = t["mean"]
        lines.append(f"| {t['name']} | {t['validation_dice']:.3f} | {mean['mean']['dice']:.3f} | "
                     + " | ".join(f"{mean[r]['dice']:.3f}" for r in regions) + f" | {t['train_seconds'] / 60:.1f} |")
    validation = [t["validation_dice"] for t in trainings]
    test = [t["mean"]["mean"]["dice"] for t in trainings]
    lines += ["", f"Spread over the {len(trainings)} trainings (standard deviation): validation "
                  f"{statistics.stdev(validation):.3f}, test {statistics.stdev(test):.3f}; range: validation "
                  f"{max(validation) - min(validation):.3f}, test {max(test) - min(test):.3f}.", "",
              "Paired test differences over the test cases, each pair of trainings [95 % bootstrap CI]:", "",
              "| A - B | mean | " + " | ".join(REGION_SHORT[r] for r in regions) + " |",
              "|---|---|" + "---|" * len(regions)]
    # paired_difference pairs methods within a seed: here every training is its own "method"
    records = [{**t, "method": t["name"]} for t in trainings]
    for a, b in itertools.combinations([t["name"] for t in trainings], 2):
        cells = [interval_text(paired_difference(records, a, b, first["labeled_fraction"], region))
                 for region in ("mean", *regions)]
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return lines


def with_training_noise(trainings: List[dict], table_dir: str) -> List[str]:
    """The table's target comparisons at the trainings' fraction, their intervals widened by training noise.

    Why: the table's bootstrap resamples (seed, case) pairs, so each run's training is taken as fixed, while training
    one setting again moves a run's mean Dice by about ``sd`` (the trainings' standard deviation). Assuming every
    row's runs carry that noise, independently, a difference of two rows' means over S seeds moves by
    ``sd * sqrt(2 / S)`` from training alone; that is added in quadrature to the table interval's spread (its
    half-width / 1.96, a normal approximation)."""
    from scipy.stats import chi2

    fraction = trainings[0]["labeled_fraction"]
    test = [t["mean"]["mean"]["dice"] for t in trainings]
    sd, n = statistics.stdev(test), len(test)
    # how uncertain sd itself is with n trainings (chi-square interval, normal noise assumed)
    sd_low, sd_high = (sd * math.sqrt((n - 1) / chi2.ppf(q, n - 1)) for q in (0.975, 0.025))
    records = load_records(table_dir)
    rows = []
    for other, margin in TARGET:
        difference = paired_difference(records, "memcif", other, fraction)
        if difference is None:
            continue
        seeds = ({r["seed"] for r in records if r["labeled_fraction"] == fraction and r["method"] == "memcif"}
                 & {r["seed"] for r in records if r["labeled_fraction"] == fraction and r["method"] == other})
        mean, low, high = difference[:3]
        spread = math.hypot((high - low) / (2 * Z95), sd * math.sqrt(2 / len(seeds)))
        widened = (mean, mean - Z95 * spread, mean + Z95 * spread)
        criterion = f"{'>= ' + format(margin, '+.3f') if margin else 'ahead of'} {METHODS[other].row}"
        met = mean >= margin and widened[1] > 0
        rows.append(f"| {criterion} | {len(seeds)} | {interval_text(difference)} | {interval_text(widened)} | "
                    f"{'yes' if met else 'no'} |")
    return ["", f"## The table's target at {fraction:.0%}, with this training noise", "",
            f"Test sd over these {n} trainings: {sd:.3f} (95 % interval for the sd itself, chi-square: "
            f"{sd_low:.3f}-{sd_high:.3f}). Full method - B, mean Dice over WT / TC / ET, from the table's runs: the "
            f"table's interval resamples (seed, test case) pairs; the widened one adds sd * sqrt(2 / seeds) in "
            f"quadrature (every row assumed to carry this setting's training noise, independently). Met: the mean "
            f"reaches the margin and the widened interval lies above 0.", "",
            "| full method ... | seeds | table's interval | with training noise | met |",
            "|---|---|---|---|---|"] + rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="the markdown file to write")
    parser.add_argument("trainings", nargs="+", metavar="NAME=RUN_DIR")
    parser.add_argument("--table", metavar="TABLE_DIR",
                        help="a table output folder: its target comparisons, widened by this training noise")
    args = parser.parse_args()
    if len(args.trainings) < 2 or any("=" not in t for t in args.trainings):
        parser.error("give at least two trainings, each as NAME=RUN_DIR")
    names = [t.split("=", 1)[0] for t in args.trainings]
    if len(set(names)) != len(names):
        parser.error(f"every training needs its own name, got {' '.join(names)}")
    trainings = [load_training(*t.split("=", 1)) for t in args.trainings]
    check_one_setting(trainings)
    lines = report(trainings)
    if args.table:
        if not os.path.isdir(os.path.join(args.table, "runs")):
            parser.error(f"{args.table} holds no table runs (no runs/ folder): give an nnunet-mem-cif table folder")
        lines += with_training_noise(trainings, args.table)
    write_text_atomically(args.report, lambda f: f.write("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
