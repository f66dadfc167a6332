"""How far training one setting again moves its Dice (docs/results.md, "Training noise, measured"): the trainings
of one setting on the same data with the same seed differ, because CPU training is not bit-reproducible (nnU-Net's
augmentation workers are not deterministic). The report gives, per setting, each training's validation and test
Dice, their spread over the trainings, and every pair's paired difference over the test cases: the interval a
comparison of one run against one run shows where nothing but the training differs. A margin between two rows of the
table is read against it (phase "retrain-ROW" of experiments/evidence_table.sh).

    python experiments/training_noise.py REPORT NAME=RUN_DIR NAME=RUN_DIR [NAME=RUN_DIR ...] [--table TABLE_DIR]

The trainings may be of several settings (rows): each needs at least two of them, and the noise is their pooled
standard deviation (every training's deviation from its own setting's mean), so that each row trained again adds to
one estimate. With ``--table``, the table's target comparisons at the trainings' labeled fraction (the full method
against each row of results_table.TARGET) are shown twice: with the table's interval, which resamples (seed, test
case) pairs and so treats a run's training as fixed, and with that interval widened by that pooled noise.

Each RUN_DIR is a finished table run's folder (its run.json and metrics.json are all that is read); runs of one
setting have the same row, options, labeled cases, seed, schedule and test cases. Writes REPORT (markdown).
"""
import argparse
import itertools
import json
import math
import os
import statistics
import sys
from typing import Dict, List, Tuple

from nnunet_mem_cif.atomic import write_text_atomically
from nnunet_mem_cif.results_table import REGION_SHORT, REGIONS, RUN_SETTING_KEYS, TARGET, case_dice, \
    interval_text, load_records, method_options, paired_difference, shared_seeds, target_criterion, target_met

Z95 = 1.96  # a normal 95 % interval's half-width in standard errors
# what makes two runs one setting: the row, its data and the table's setting keys (the options included); the rest
# of run.json (times, versions, command, scores) may differ
SAME = ("method", "labeled_cases", "test_cases", "dataset", "configuration", "fold", *RUN_SETTING_KEYS)


def load_training(name: str, run_dir: str) -> dict:
    record_file = os.path.join(run_dir, "run.json")
    cases = case_dice(run_dir)
    if not os.path.isfile(record_file) or not cases:
        sys.exit(f"{run_dir}: no finished table run (run.json and metrics.json): give a run folder the table wrote")
    with open(record_file) as f:
        record = json.load(f)
    return {**record, "name": name, "folder": run_dir, "case_dice": cases}


def setting_title(training: dict) -> str:
    return (f"{training['row']}, {training['labeled_fraction']:.0%} labeled, seed {training['seed']}, "
            f"{training['epochs']} x {training['iterations_per_epoch']} "
            f"({' '.join(method_options(training)) or 'trainers defaults'})")


def by_setting(trainings: List[dict]) -> List[List[dict]]:
    """The trainings grouped by setting, in the order given; a setting trained once shows no noise, so is refused
    (a run given by mistake, of another setting, is caught the same way)."""
    settings: Dict[str, List[dict]] = {}
    for t in trainings:
        settings.setdefault(json.dumps([t.get(k) for k in SAME]), []).append(t)
    for setting in settings.values():
        if len(setting) < 2:
            sys.exit(f"{setting[0]['folder']} is the only training of its setting ({setting_title(setting[0])}): "
                     f"give at least two trainings of each setting (one setting: same row, options, labeled cases, "
                     f"seed, schedule and test cases)")
    return list(settings.values())


def pooled_sd(settings: List[List[dict]]) -> Tuple[float, int]:
    """The test Dice's standard deviation within settings, pooled over them, and its degrees of freedom."""
    tests = [[t["mean"]["mean"]["dice"] for t in setting] for setting in settings]
    squares = sum((x - statistics.mean(values)) ** 2 for values in tests for x in values)
    freedom = sum(len(values) - 1 for values in tests)
    return math.sqrt(squares / freedom), freedom


def report(trainings: List[dict]) -> List[str]:
    first = trainings[0]
    regions = [r for r in REGIONS if r != "mean"]
    lines = [f"## {setting_title(first)}", "",
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


def with_training_noise(settings: List[List[dict]], table_dir: str) -> List[str]:
    """The table's target comparisons at the trainings' fraction, their intervals widened by training noise.

    Why: the table's bootstrap resamples (seed, case) pairs, so each run's training is taken as fixed, while training
    one setting again moves a run's mean Dice by about ``sd`` (the pooled standard deviation within settings).
    Assuming every row's runs carry that noise, independently, a difference of two rows' means over S seeds moves by
    ``sd * sqrt(2 / S)`` from training alone; that is added in quadrature to the table interval's spread (its
    half-width / 1.96, a normal approximation)."""
    from scipy.stats import chi2

    fraction = settings[0][0]["labeled_fraction"]
    sd, freedom = pooled_sd(settings)
    # how uncertain sd itself is with these degrees of freedom (chi-square interval, normal noise assumed)
    sd_low, sd_high = (sd * math.sqrt(freedom / chi2.ppf(q, freedom)) for q in (0.975, 0.025))
    records = load_records(table_dir)
    rows = []
    for other, margin in TARGET:
        difference = paired_difference(records, "memcif", other, fraction)
        if difference is None:
            continue
        seeds = shared_seeds(records, "memcif", other, fraction)
        mean, low, high = difference[:3]
        spread = math.hypot((high - low) / (2 * Z95), sd * math.sqrt(2 / len(seeds)))
        widened = (mean, mean - Z95 * spread, mean + Z95 * spread)
        rows.append(f"| {target_criterion(other, margin)} | {len(seeds)} | {interval_text(difference)} | "
                    f"{interval_text(widened)} | {'yes' if target_met(widened, margin) else 'no'} |")
    return ["", f"## The table's target at {fraction:.0%}, with this training noise", "",
            f"Test sd over the {sum(map(len, settings))} trainings of {len(settings)} "
            f"setting{'s' if len(settings) > 1 else ''}, pooled within settings ({freedom} "
            f"degree{'s' if freedom > 1 else ''} of freedom): {sd:.3f} (95 % interval for the sd itself, chi-square: "
            f"{sd_low:.3f}-{sd_high:.3f}). Full method - B, "
            f"mean Dice over WT / TC / ET, from the table's runs: the table's interval resamples (seed, test case) "
            f"pairs; the widened one adds sd * sqrt(2 / seeds) in quadrature (every row assumed to carry this "
            f"training noise, independently). Met: the mean reaches the margin and the widened interval lies above "
            f"0.", "",
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
    settings = by_setting([load_training(*t.split("=", 1)) for t in args.trainings])
    lines = [f"# Training noise: {len(args.trainings)} trainings of {len(settings)} "
             f"setting{'s' if len(settings) > 1 else ''}"]
    for setting in settings:
        lines += [""] + report(setting)
    if args.table:
        if not os.path.isdir(os.path.join(args.table, "runs")):
            parser.error(f"{args.table} holds no table runs (no runs/ folder): give an nnunet-mem-cif table folder")
        if len({s[0]["labeled_fraction"] for s in settings}) > 1:
            parser.error("the table's target is compared at one labeled fraction: give trainings of one fraction")
        lines += with_training_noise(settings, args.table)
    write_text_atomically(args.report, lambda f: f.write("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
