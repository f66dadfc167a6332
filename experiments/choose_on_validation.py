"""Choose the full method's consistency weight and MEM / CIF lr multipliers on nnU-Net's fold validation cases,
never on test cases (phase "choices" of experiments/evidence_table.sh; docs/results.md).

Every candidate is one ``nnunet-mem-cif table`` output folder under CHOICES_DIR, named after the candidate, that
trained the full method (``--methods memcif``) with that candidate's options; its run.json records them. The
trainers' own setting (folder ``default``) is kept unless another candidate is better on the validation cases with a
95 % paired bootstrap interval above 0 (pairs: seed and validation case, as the table pairs test cases): with one
seed and a few validation cases a smaller difference is noise, and the default then stands. Writes ``choices.md``
(every candidate, its validation Dice and its paired difference to the default) and ``chosen.json`` (the chosen
candidate and the table options that train it) into CHOICES_DIR; test Dice is not read.

    python experiments/choose_on_validation.py CHOICES_DIR [--method METHOD --reference NAME]

``--method`` chooses another row's setting the same way (its runs in the candidate folders; docs/results.md: Mean
Teacher's consistency weight), and ``--reference`` names the candidate that stands unless beaten, where that is
not the trainers' default (the setting a table already ran the row with).

With ``--variants``, after the setting is chosen: the candidate changes to the method (docs/results.md: the
enhancing-tumor diagnosis) trained with the chosen setting in CHOICES_DIR/variants (``--methods memcif-keep-t1ce
memcif-mask-t1ce``, same fraction and seed) are compared with the chosen full-method run on the same validation
cases; the one with the higher validation Dice joins the table, which reports it beside the full method over every
seed. Writes ``variants.md`` and adds ``variant`` to ``chosen.json``.
"""
import argparse
import json
import os
import statistics
import sys
from typing import Dict, List

from nnunet_mem_cif.atomic import write_text_atomically
from nnunet_mem_cif.results_table import METHODS, Run, fold_folder, interval_text, load_records, method_options, \
    paired_difference, validation_case_dice

DEFAULT = "default"
VARIANTS = "variants"  # the folder of the candidate changes to the method, not a setting candidate


def validation_dice_of(record: dict, run_dir: str) -> Dict[str, Dict[str, float]]:
    """Per validation case the mean Dice over nnU-Net's evaluated regions: from run.json, or for a run recorded
    before run.json kept it, from nnU-Net's fold validation summary.json in the run's folder."""
    dice = record.get("validation_case_dice")
    if dice is None:
        fold = fold_folder(run_dir, record["dataset"], record["trainer"], record["fold"], record["configuration"])
        summary = os.path.join(fold, "validation", "summary.json")
        if not os.path.isfile(summary):
            sys.exit(f"{run_dir}/run.json has no per-case validation Dice (recorded before it was kept) and "
                     f"{summary} is not there: train the run again on this machine")
        with open(summary) as f:
            dice = validation_case_dice(json.load(f))
    return {case: {"mean": value} for case, value in dice.items()}


def runs_with_validation(output: str) -> List[dict]:
    """The finished runs of one table output folder, each with its per-case validation Dice under ``case_dice``."""
    runs = load_records(output)
    for r in runs:
        r["case_dice"] = validation_dice_of(r, Run.of_record(r).folder(output))
    return runs


def candidates(choices_dir: str, method: str = "memcif") -> Dict[str, List[dict]]:
    """Candidate name -> its runs of ``method``, each with its per-case validation Dice under ``case_dice``."""
    found = {}
    for name in sorted(os.listdir(choices_dir)):
        output = os.path.join(choices_dir, name)
        if name == VARIANTS or not os.path.isdir(os.path.join(output, "runs")):
            continue
        runs = [r for r in runs_with_validation(output) if r["method"] == method]
        for r in runs:
            r["method"] = name  # paired_difference pairs methods; here the candidates
        if runs:
            found[name] = runs
    return found


def mean_validation_dice(runs: List[dict]) -> float:
    return statistics.mean(statistics.mean(c["mean"] for c in r["case_dice"].values()) for r in runs)


def choose_variant(choices_dir: str) -> int:
    chosen_file = os.path.join(choices_dir, "chosen.json")
    if not os.path.isfile(chosen_file):
        sys.exit(f"{chosen_file} not found: choose the setting first (this script without --variants)")
    with open(chosen_file) as f:
        chosen = json.load(f)
    full = [dict(r, method="memcif") for r in candidates(choices_dir).get(chosen["candidate"], [])]
    variants = runs_with_validation(os.path.join(choices_dir, VARIANTS)) \
        if os.path.isdir(os.path.join(choices_dir, VARIANTS, "runs")) else []
    if not full or not variants:
        sys.exit(f"{choices_dir}: the chosen candidate's full-method run and at least one run in {VARIANTS}/ are "
                 f"needed (experiments/evidence_table.sh, phase choices)")
    fraction = full[0]["labeled_fraction"]
    by_method = {}
    for r in variants:
        by_method.setdefault(r["method"], []).append(r)
    lines = [f"# Candidate changes to the method, on nnU-Net's fold validation cases ({fraction:.0%} labeled, "
             f"setting {chosen['candidate']})", "",
             "| method | seeds | validation cases | validation Dice (mean over regions) | paired difference to the "
             "full method [95 % CI] |", "|---|---|---|---|---|",
             f"| memcif (full method) | {', '.join(str(r['seed']) for r in full)} | "
             f"{sum(len(r['case_dice']) for r in full)} | {mean_validation_dice(full):.3f} | - |"]
    for method, runs in sorted(by_method.items()):
        difference = paired_difference(full + runs, method, "memcif", fraction)
        shown = "-" if difference is None else interval_text(difference)
        lines.append(f"| {method} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{sum(len(r['case_dice']) for r in runs)} | {mean_validation_dice(runs):.3f} | {shown} |")
    variant = max(sorted(by_method), key=lambda m: mean_validation_dice(by_method[m]))
    lines += ["", f"Chosen: **{variant}** (the higher validation Dice of the candidates): it joins the table beside "
                  f"the full method, over every seed. Test cases were not read."]
    write_text_atomically(os.path.join(choices_dir, "variants.md"), lambda f: f.write("\n".join(lines) + "\n"))
    write_text_atomically(chosen_file, lambda f: json.dump({**chosen, "variant": variant}, f, indent=2))
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("choices_dir")
    parser.add_argument("--variants", action="store_true",
                        help="choose among the candidate changes to the method in CHOICES_DIR/variants")
    parser.add_argument("--method", choices=sorted(METHODS), default="memcif",
                        help="the table row whose setting is chosen (default: memcif, the full method)")
    parser.add_argument("--reference", default=DEFAULT,
                        help=f"the candidate that stands unless another is better (default: {DEFAULT})")
    args = parser.parse_args()
    choices_dir = os.path.abspath(args.choices_dir)
    if args.variants:
        return choose_variant(choices_dir)
    found = candidates(choices_dir, args.method)
    row, reference = METHODS[args.method].row, args.reference
    named = "the default" if reference == DEFAULT else reference
    if reference not in found:
        parser.error(f"{choices_dir}/{reference} holds no finished {row} run: train it first "
                     f"(experiments/evidence_table.sh, the phase that trains these candidates)")
    fractions = sorted({r["labeled_fraction"] for r in found[reference]})
    if len(fractions) != 1:
        parser.error(f"{named}'s runs are at several labeled fractions ({fractions}); choose at one")
    fraction = fractions[0]
    records = [r for runs in found.values() for r in runs]
    lines = [f"# Choices on nnU-Net's fold validation cases ({row}, {fraction:.0%} labeled)", "",
             "| candidate | table options | seeds | validation cases | validation Dice (mean over regions) | "
             f"paired difference to {named} [95 % CI] |", "|---|---|---|---|---|---|"]
    chosen, best = reference, 0.0
    for name, runs in found.items():
        dice = mean_validation_dice(runs)
        cases = sum(len(r["case_dice"]) for r in runs)
        difference = None if name == reference else paired_difference(records, name, reference, fraction)
        shown = "-" if difference is None else interval_text(difference)
        lines.append(f"| {name} | {' '.join(method_options(runs[0])) or '(trainers defaults)'} | "
                     f"{', '.join(str(r['seed']) for r in runs)} | {cases} | {dice:.3f} | {shown} |")
        if difference is not None and difference[1] > 0 and difference[0] > best:
            chosen, best = name, difference[0]
    options = method_options(found[chosen][0])
    lines += ["", f"Chosen: **{chosen}** ({' '.join(options) or 'the trainers defaults'}): {named} stands "
                  f"unless a candidate is better with a 95 % interval above 0. Test cases were not read."]
    write_text_atomically(os.path.join(choices_dir, "choices.md"), lambda f: f.write("\n".join(lines) + "\n"))
    write_text_atomically(os.path.join(choices_dir, "chosen.json"),
                          lambda f: json.dump({"candidate": chosen, "table_options": options}, f, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
