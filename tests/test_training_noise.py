"""experiments/training_noise.py: the trainings of one setting, their spread and every pair's paired test
difference; runs of different settings are refused."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "training_noise.py"
REGIONS = ("whole_tumor", "tumor_core", "enhancing_tumor")


def write_run(folder: Path, test_dice: list, validation_dice: float, **setting) -> Path:
    """A finished table run as committed: run.json and metrics.json (per test case, one Dice for every region)."""
    folder.mkdir(parents=True)
    cases = {f"t{i}": {r: {"dice": d} for r in REGIONS} for i, d in enumerate(test_dice)}
    mean_dice = sum(test_dice) / len(test_dice)
    record = {"method": "mean-teacher", "row": "Mean Teacher", "labeled_fraction": 0.01, "seed": 1, "epochs": 45,
              "iterations_per_epoch": 40, "batch_size": 16, "labeled_cases": ["a", "b"], "test_cases": sorted(cases),
              "dataset": "Dataset994_X", "configuration": "2d", "fold": 0, "consistency_weight": 10.0,
              "validation_dice": validation_dice, "validation_cases": 60, "train_seconds": 1800.0,
              "mean": {r: {"dice": mean_dice} for r in (*REGIONS, "mean")}, **setting}
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "metrics.json").write_text(json.dumps({"cases": cases}))
    return folder


def test_the_trainings_of_one_setting_are_compared_pair_by_pair(tmp_path):
    base = [0.7, 0.8, 0.75, 0.85]
    first = write_run(tmp_path / "a", base, 0.77)
    second = write_run(tmp_path / "b", [d - 0.02 for d in base], 0.74)
    third = write_run(tmp_path / "c", [d + 0.01 for d in base], 0.76)
    report = tmp_path / "noise.md"
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), f"table={first}", f"again={second}",
                             f"third={third}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert text.startswith("# Training noise: 3 trainings of 1 setting\n\n## Mean Teacher, 1% labeled, seed 1, "
                           "45 x 40 (--consistency-weight 10)\n")
    assert "| again | 0.740 | 0.755 | 0.755 | 0.755 | 0.755 | 30.0 |" in text
    assert "validation 0.015, test 0.015; range: validation 0.030, test 0.030" in text
    assert "| table - again | +0.020 [+0.020, +0.020] |" in text and "| again - third | -0.030 [-0.030, -0.030] |" \
        in text


def test_a_setting_trained_once_or_an_unfinished_run_is_refused(tmp_path):
    base = [0.7, 0.8, 0.75, 0.85]
    first = write_run(tmp_path / "a", base, 0.77)
    other = write_run(tmp_path / "b", base, 0.75, consistency_weight=30.0)
    report = tmp_path / "noise.md"
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), f"a={first}", f"b={other}"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "is the only training of its setting" in result.stderr and not report.exists()
    (tmp_path / "c").mkdir()
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), f"a={first}", f"c={tmp_path / 'c'}"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "no finished table run" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), f"a={first}"], capture_output=True, text=True)
    assert result.returncode == 2 and "at least two trainings" in result.stderr


def test_the_tables_target_is_widened_by_the_training_noise(tmp_path):
    base = [0.7, 0.8, 0.75, 0.85]
    trainings = [f"{name}={write_run(tmp_path / name, [d + shift for d in base], 0.77)}"
                 for name, shift in (("a", -0.02), ("b", 0.0), ("c", 0.01))]  # test sd 0.0153
    table = tmp_path / "table"
    for seed in (0, 1, 2):  # the full method 0.05 ahead of supervised nnU-Net on every case: the table's CI is a point
        for method, shift in (("memcif", 0.05), ("nnunet", 0.0), ("no-mem", 0.04)):
            write_run(table / "runs" / method / f"fraction0.01_seed{seed}", [d + shift for d in base], 0.77,
                      method=method, seed=seed)
    report = tmp_path / "noise.md"
    command = [sys.executable, str(SCRIPT), str(report), *trainings, "--table"]
    result = subprocess.run(command + [str(table)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    # 0.05 +- 1.96 * 0.0153 * sqrt(2 / 3); a lead the table's interval shows can be lost in the noise; no row
    # without runs is shown
    assert "| >= +0.030 supervised nnU-Net | 3 | +0.050 [+0.050, +0.050] | +0.050 [+0.026, +0.074] | yes |" in text
    assert "| ahead of no MEM | 3 | +0.010 [+0.010, +0.010] | +0.010 [-0.014, +0.034] | no |" in text
    assert "ahead of Mean Teacher" not in text
    assert "Test sd over the 3 trainings of 1 setting, pooled within settings (2 degrees of freedom): 0.015" in text
    result = subprocess.run(command + [str(tmp_path / "a")], capture_output=True, text=True)
    assert result.returncode == 2 and "holds no table runs" in result.stderr


def test_the_noise_of_several_settings_is_pooled_within_each(tmp_path):
    base = [0.7, 0.8, 0.75, 0.85]
    trainings = [f"{name}={write_run(tmp_path / name, [d + shift for d in base], 0.77, **setting)}"
                 for name, shift, setting in (("mt-a", -0.01, {}), ("mt-b", 0.01, {}),
                                              ("full-a", 0.05, {"method": "memcif", "row": "full method"}),
                                              ("full-b", 0.09, {"method": "memcif", "row": "full method"}))]
    report = tmp_path / "noise.md"
    table = tmp_path / "table"
    for seed in (0, 1, 2):
        for method, shift in (("memcif", 0.05), ("nnunet", 0.0)):
            write_run(table / "runs" / method / f"fraction0.01_seed{seed}", [d + shift for d in base], 0.77,
                      method=method, seed=seed)
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), *trainings, "--table", str(table)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    # each setting apart; the gap between them (0.06) is no noise: sqrt((2 * 0.01^2 + 2 * 0.02^2) / 2) = 0.022, and
    # the lead over nnU-Net widens to 0.05 +- 1.96 * 0.022 * sqrt(2 / 3)
    assert "\n## Mean Teacher, 1% labeled" in text and "\n## full method, 1% labeled" in text
    assert "| full-a - full-b | -0.040 [-0.040, -0.040] |" in text and "mt-a - full-a" not in text
    assert "Test sd over the 4 trainings of 2 settings, pooled within settings (2 degrees of freedom): 0.022" in text
    assert "| >= +0.030 supervised nnU-Net | 3 | +0.050 [+0.050, +0.050] | +0.050 [+0.014, +0.086] | yes |" in text
