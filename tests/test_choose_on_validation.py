"""experiments/choose_on_validation.py: settings are chosen on nnU-Net's fold validation cases, the default stands
unless a candidate is better with a paired interval above 0, and the test cases are never read."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from nnunet_mem_cif.results_table import fold_folder, validation_case_dice

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "choose_on_validation.py"
DATASET, TRAINER = "Dataset992_X", "MemCifSemiTrainer_table"


def write_candidate(choices: Path, name: str, validation_dice: list, test_dice: float, method: str = "memcif",
                    committed: bool = False, **setting) -> None:
    """A finished run (by default of the full method) as the table writes it: run.json, nnU-Net's validation
    summary, test metrics. ``committed``: only what is committed of it, run.json (with its per-case validation
    Dice) and metrics.json."""
    run_dir = choices / name / "runs" / method / "fraction0.01_seed0"
    cases = [{"reference_file": f"/gt/case_{i}.nii.gz", "metrics": {"(1, 2, 3)": {"Dice": d}, "(2, 3)": {"Dice": d},
                                                                    "3": {"Dice": d}}}
             for i, d in enumerate(validation_dice)]
    record = {"method": method, "labeled_fraction": 0.01, "seed": 0, "dataset": DATASET, "trainer": TRAINER,
              "fold": 0, "configuration": "2d", **setting}
    if committed:
        record["validation_case_dice"] = validation_case_dice({"metric_per_case": cases})
        run_dir.mkdir(parents=True)
    else:
        validation = Path(fold_folder(str(run_dir), DATASET, TRAINER, 0, "2d")) / "validation"
        validation.mkdir(parents=True)
        (validation / "summary.json").write_text(json.dumps({"metric_per_case": cases}))
    (run_dir / "run.json").write_text(json.dumps(record))
    # a test score that would reverse the choice if it were read
    metrics = {"cases": {f"t{i}": {r: {"dice": test_dice} for r in ("whole_tumor", "tumor_core", "enhancing_tumor")}
                         for i in range(3)}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def choose(choices: Path) -> dict:
    result = subprocess.run([sys.executable, str(SCRIPT), str(choices)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads((choices / "chosen.json").read_text())


def test_a_candidate_better_on_every_validation_case_is_chosen_whatever_its_test_dice(tmp_path):
    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.6]
    write_candidate(tmp_path, "default", base, test_dice=0.9)
    write_candidate(tmp_path, "weight-0.3", [d + 0.05 for d in base], test_dice=0.1, consistency_weight=0.3)
    write_candidate(tmp_path, "lr-1", [d + 0.02 for d in base], test_dice=0.95, mem_lr_multiplier=1.0,
                    cif_lr_multiplier=1.0)
    assert choose(tmp_path) == {"candidate": "weight-0.3", "table_options": ["--consistency-weight", "0.3"]}
    report = (tmp_path / "choices.md").read_text()
    assert "| lr-1 | --lr-multipliers 1:1 | 0 | 6 |" in report and "+0.050 [+0.050, +0.050]" in report


def test_the_default_stands_when_no_candidate_is_better_beyond_noise(tmp_path):
    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.6]
    write_candidate(tmp_path, "default", base, test_dice=0.1)
    # higher on average, but worse on some cases: the interval includes 0
    write_candidate(tmp_path, "weight-3", [d + s for d, s in zip(base, (0.2, -0.1, 0.15, -0.12, 0.1, -0.05))],
                    test_dice=0.9, consistency_weight=3.0)
    assert choose(tmp_path) == {"candidate": "default", "table_options": []}
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode != 0


def test_the_change_to_the_method_with_the_higher_validation_dice_joins_the_table(tmp_path):
    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.6]
    write_candidate(tmp_path, "default", base, test_dice=0.5)
    write_candidate(tmp_path, "weight-0.3", [d + 0.05 for d in base], test_dice=0.5, consistency_weight=0.3)
    variants = [sys.executable, str(SCRIPT), str(tmp_path), "--variants"]
    assert subprocess.run(variants, capture_output=True, text=True).returncode != 0  # no setting chosen yet
    choose(tmp_path)
    write_candidate(tmp_path, "variants", [d + 0.06 for d in base], test_dice=0.1, method="memcif-keep-t1ce",
                    consistency_weight=0.3)
    write_candidate(tmp_path, "variants", [d + 0.04 for d in base], test_dice=0.99, method="memcif-mask-t1ce",
                    consistency_weight=0.3)
    result = subprocess.run(variants, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "chosen.json").read_text()) == {
        "candidate": "weight-0.3", "table_options": ["--consistency-weight", "0.3"], "variant": "memcif-keep-t1ce"}
    report = (tmp_path / "variants.md").read_text()
    # paired against the chosen setting's full-method run, not the default's
    assert "| memcif-mask-t1ce | 0 | 6 | 0.640 | -0.010 [-0.010, -0.010] |" in report
    assert choose(tmp_path)["candidate"] == "weight-0.3"  # the variants' folder is no setting candidate


def test_another_rows_setting_is_chosen_against_the_setting_the_table_ran_it_with(tmp_path):
    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.6]
    write_candidate(tmp_path, "weight-10", base, test_dice=0.9, method="mean-teacher", consistency_weight=10.0)
    write_candidate(tmp_path, "default", [d + 0.03 for d in base], test_dice=0.1, method="mean-teacher")
    # the full method's run is no candidate for Mean Teacher, however good
    write_candidate(tmp_path, "weight-3", [d + 0.2 for d in base], test_dice=0.1, consistency_weight=3.0)
    command = [sys.executable, str(SCRIPT), str(tmp_path), "--method", "mean-teacher"]
    assert subprocess.run(command + ["--reference", "weight-1"], capture_output=True, text=True).returncode != 0
    result = subprocess.run(command + ["--reference", "weight-10"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "chosen.json").read_text()) == {"candidate": "default", "table_options": []}
    report = (tmp_path / "choices.md").read_text()
    assert report.startswith("# Choices on nnU-Net's fold validation cases (Mean Teacher, 1% labeled)")
    assert "paired difference to weight-10" in report and "| weight-3 |" not in report
    assert "| default | (trainers defaults) | 0 | 6 | 0.630 | +0.030 [+0.030, +0.030] |" in report


def test_a_choice_is_made_again_from_committed_records_and_an_old_record_without_its_folder_is_refused(tmp_path):
    base = [0.5, 0.6, 0.7, 0.55, 0.65, 0.6]
    # the reference only as committed (no nnU-Net folder), the candidate with its folder: they pair case by case
    write_candidate(tmp_path, "default", base, test_dice=0.9, committed=True)
    write_candidate(tmp_path, "weight-3", [d + 0.05 for d in base], test_dice=0.1, consistency_weight=3.0)
    assert choose(tmp_path)["candidate"] == "weight-3"
    assert "| default | (trainers defaults) | 0 | 6 | 0.600 | - |" in (tmp_path / "choices.md").read_text()
    # a record from before run.json kept per-case validation Dice, without the run's folder: nothing to choose on
    old = tmp_path / "weight-3" / "runs" / "memcif" / "fraction0.01_seed0"
    shutil.rmtree(old / "nnUNet_results")
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{old}/run.json has no per-case validation Dice" in result.stderr and "train the run again" in result.stderr
