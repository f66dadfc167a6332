"""The paper's table: the *_table trainers' setting, the table writer, and the command through nnU-Net's CLI."""
import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path

import pytest

from nnunet_mem_cif.results_table import DEFAULT_METHODS, METHODS, REGIONS, Run, check_arguments, check_dataset, \
    TableSetting, check_same_setting, convergence_met, fold_folder, headroom, headroom_met, load_records, \
    markdown_report, method_options, paired_difference, parse_lr_multipliers, run_setting, shared_seeds, \
    trained_before_resume, table_runs, write_report
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.trainers.table_runs import TABLE_RUN_VARIABLE, table_run_setting
from .nnunet_workspace import DATASET_ID, DATASET_NAME


def fake_record(method: str, fraction: float, seed: int, dice: float) -> dict:
    mean = {region: {"dice": dice + i / 100, "sensitivity": dice / 2, "hd95": 3.0} for i, region in
            enumerate(REGIONS)}
    return {"method": method, "row": METHODS[method].row, "trainer": METHODS[method].trainer, "dataset": "Dataset9_X",
            "fold": 0, "configuration": "3d_fullres", "labeled_fraction": fraction, "epochs": 5,
            "iterations_per_epoch": 7, "seed": seed, "labeled_cases": ["a", "b"][:1 + int(fraction > 0.02)],
            "unlabeled_pool": 9, "test_cases": ["t1", "t2", "t3"], "mean": mean, "train_seconds": 120.0,
            "predict_seconds": 5.0, "device": "cpu", "versions": {"torch": "x"}, "command": "nnunet-mem-cif bench"}


def write_fake_runs(root, records) -> None:
    for r in records:
        folder = root / "runs" / r["method"] / f"fraction{r['labeled_fraction']:g}_seed{r['seed']}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(r))


def test_table_writer_groups_methods_by_fraction_with_mean_and_std_over_seeds(tmp_path):
    records = [fake_record(m, f, s, d) for m, d in (("memcif", 0.8), ("nnunet", 0.6))
               for f in (0.01, 0.05) for s in (0, 1)]
    records[0]["mean"]["whole_tumor"]["dice"] = 0.9  # memcif, 1 %, seed 0: 0.9 and 0.8 -> 0.850 ± 0.071
    records[1]["command"] = "nnunet-mem-cif table --seeds 1"  # runs of two commands in one table
    write_fake_runs(tmp_path, records)
    assert [(r["labeled_fraction"], r["method"]) for r in load_records(str(tmp_path))][:4] == \
        [(0.01, "nnunet"), (0.01, "nnunet"), (0.01, "memcif"), (0.01, "memcif")]  # the table's row order
    written = write_report(str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["results.md", "results.csv", "results.png"]
    assert os.path.getsize(tmp_path / "results.png") > 1000
    table = (tmp_path / "results.md").read_text()
    assert "3 held-out test cases" in table and "seeds: 0, 1" in table and "5 epochs x 7 iterations" in table
    assert "- commands: `nnunet-mem-cif bench`; `nnunet-mem-cif table --seeds 1`" in table
    main = table.split("\n## ")[0]  # the methods x fractions table, before the sections that follow it
    rows = [line for line in main.splitlines() if line.startswith("| 1% |") or line.startswith("| 5% |")]
    assert len(rows) == 4
    assert rows[0].startswith("| 1% | supervised nnU-Net | 1 | 0, 1 | 0.600 ± 0.000 |")
    assert rows[1].startswith("| 1% | full method | 1 | 0, 1 | 0.850 ± 0.071 | 0.810 ± 0.000 |")
    assert rows[3].startswith("| 5% | full method | 2 | 0, 1 |")
    incomplete = markdown_report([r for r in records if (r["method"], r["seed"]) != ("memcif", 1)])
    assert "| 1% | full method | 1 | 0 | 0.900 |" in incomplete  # a row with fewer seeds says so
    with open(tmp_path / "results.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(records) * len(REGIONS)
    assert {line["region"] for line in lines} == set(REGIONS)
    assert markdown_report([]) == "no finished runs yet\n"


def with_cases(record: dict, dice: dict) -> dict:
    """``record`` with per-case Dice (every region the same) as load_records reads it from metrics.json."""
    return {**record, "case_dice": {case: {region: d for region in REGIONS} for case, d in dice.items()}}


def test_paired_difference_pairs_seeds_and_cases_and_bootstraps_an_interval():
    records = [with_cases(fake_record("memcif", 0.01, s, 0.8), {"t1": 0.8, "t2": 0.7 + s / 10}) for s in (0, 1)]
    records += [with_cases(fake_record("nnunet", 0.01, s, 0.6), {"t1": 0.6, "t2": 0.6}) for s in (0, 1)]
    mean, low, high, pairs = paired_difference(records, "memcif", "nnunet", 0.01)
    assert pairs == 4 and mean == pytest.approx((0.2 + 0.1 + 0.2 + 0.2) / 4)
    assert 0.1 <= low < mean < high <= 0.2 + 1e-9  # every pair is ahead, so the interval excludes 0
    assert paired_difference(records, "memcif", "mean-teacher", 0.01) is None  # no such runs
    records.append(with_cases(fake_record("mean-teacher", 0.01, 0, 0.6), {"t1": 0.9, "t2": 0.3}))
    mean, low, high, pairs = paired_difference(records, "memcif", "mean-teacher", 0.01)
    assert pairs == 2 and low < 0 < high  # only seed 0 has both; -0.1 and +0.4 straddle 0
    assert shared_seeds(records, "memcif", "mean-teacher", 0.01) == {0}
    without_cases = records + [fake_record("mean-teacher", 0.01, 1, 0.6)]  # no per-case metrics: neither pairs it
    assert paired_difference(without_cases, "memcif", "mean-teacher", 0.01)[3] == 2
    assert shared_seeds(without_cases, "memcif", "mean-teacher", 0.01) == {0}
    records.append(with_cases(fake_record("no-cif", 0.01, 1, 0.7), {"t1": 0.7, "t2": 0.7}))
    records.append(with_cases(fake_record("no-mem", 0.01, 0, 0.5), {"t1": 0.5, "t2": 0.8}))
    report = markdown_report(records)
    assert "## Paired differences" in report and "| 1% | full method - supervised nnU-Net | 4 | +0.175 [" in report
    assert "| 1% | no CIF - supervised nnU-Net | 2 | +0.100 [" in report  # each ablation against the baselines
    assert "| 1% | no MEM - supervised nnU-Net | 2 | +0.050 [" in report


@pytest.mark.parametrize("options", [[], ["--consistency-weight", "0.3"], ["--lr-multipliers", "1:1"],
                                     ["--consistency-weight", "10", "--lr-multipliers", "30:150"]])
def test_method_options_give_a_runs_setting_back(options):
    """A setting chosen on validation is written as table options (chosen.json) and trained from them again."""
    from nnunet_mem_cif.cli import build_parser
    args = build_parser().parse_args(["table", "--dataset-id", "1", "--output-dir", "out", *options])
    table = TableSetting(1, "Dataset001_X", "raw", "pre", "out", "2d", 0, 5, 7, None, False, args.consistency_weight,
                         args.lr_multipliers, "cpu", None)
    assert method_options(run_setting(Run("memcif", 0.01, 0), table)) == options


def test_target_is_judged_from_paired_intervals_and_stays_open_without_runs():
    cases = {"t1": 0.0, "t2": 0.0, "t3": 0.0}

    def run(method: str, seed: int, dice: float, spread: float = 0.0) -> dict:
        return with_cases(fake_record(method, 0.01, seed, dice),
                          {c: dice + spread * (i - 1) for i, c in enumerate(cases)})

    records = [run("memcif", s, 0.80) for s in (0, 1, 2)] + [run("nnunet", s, 0.70) for s in (0, 1, 2)]
    records += [run("mean-teacher", s, 0.79) for s in (0, 1, 2)]  # behind by 0.01 on every case: ahead, shown
    records += [run("no-mem", s, 0.80, spread=0.05) for s in (0, 1, 2)]  # the same on average: not shown
    report = markdown_report(records)
    assert "## Target: the full method ahead at 1%" in report
    assert "leaves out training noise" in report  # the table's intervals hold each training fixed; it says so
    assert "| 1% | >= +0.030 supervised nnU-Net | +0.100 [+0.100, +0.100] | 3 | yes |" in report
    assert "| 1% | ahead of Mean Teacher | +0.010 [+0.010, +0.010] | 3 | yes |" in report
    assert re.search(r"\| 1% \| ahead of no MEM \| \+0\.000 \[-0\.0\d\d, \+0\.0\d\d\] \| 3 \| no \|", report)
    assert "| 1% | ahead of no CIF | not run yet | 0 | open |" in report
    assert "**Not met** so far (2 criteria open)." in report
    with_self_training = records + [run("self-training", s, 0.70) for s in (0, 1, 2)]  # only no CIF left open
    assert "**Not met** so far (1 criterion open)." in markdown_report(with_self_training)
    shown = [r for r in records if r["method"] != "no-mem"]
    assert "**Open**: 3 of 5 criteria have no runs yet." in markdown_report(shown)
    one_seed = [r for r in records if r["seed"] == 0 and r["method"] in ("memcif", "nnunet")]
    assert "| 3 | yes |" not in markdown_report(one_seed) and "| 1 | yes (provisional) |" in markdown_report(one_seed)
    everything = [run(m, 0, d) for m, d in (("memcif", 0.8), ("nnunet", 0.7), ("mean-teacher", 0.7),
                                            ("self-training", 0.7), ("no-mem", 0.7), ("no-cif", 0.7))]
    assert "**Met**, provisional (fewer than 3 seeds)." in markdown_report(everything)
    assert "**Met**." in markdown_report([{**r, "seed": s} for r in everything for s in (0, 1, 2)])
    assert "## Target" not in markdown_report([r for r in records if r["method"] == "nnunet"])


def test_convergence_check_needs_every_step_in_labels_above_twice_the_seed_spread():
    def table(values):
        return [fake_record("nnunet-all" if f == 1 else "nnunet", f, s, d) for f, ds in values.items()
                for s, d in enumerate(ds)]
    met = markdown_report(table({0.01: [0.50, 0.52], 0.1: [0.70, 0.71], 1.0: [0.85, 0.86]}))
    assert "| 1% -> 10% | 0.540 -> 0.735 | +0.195 |" in met and "**Met**" in met
    not_met = markdown_report(table({0.01: [0.50, 0.60], 0.1: [0.58, 0.62], 1.0: [0.85, 0.86]}))
    assert "| 1% -> 10% | 0.580 -> 0.630 | +0.050 | 0.141 | no |" in not_met and "**Not met**" in not_met
    assert "Convergence check" not in markdown_report(table({0.01: [0.5]}))
    assert convergence_met(table({0.01: [0.50, 0.52], 0.1: [0.70, 0.71]}), "test")
    assert not convergence_met(table({0.01: [0.50, 0.60], 0.1: [0.58, 0.62]}), "test")
    assert not convergence_met(table({0.01: [0.50], 0.1: [0.70]}), "test")  # one seed cannot show it
    assert not convergence_met(table({0.01: [0.50, 0.52], 0.1: [0.70, 0.71]}), "validation")  # none recorded


def test_headroom_is_the_step_from_supervised_nnunet_to_all_labels_and_gates_the_target_margin():
    def record(fraction: float, seed: int, test: float, validation: float) -> dict:
        return {**fake_record("nnunet-all" if fraction == 1 else "nnunet", fraction, seed, test),
                "validation_dice": validation}
    records = [record(f, s, d + s / 100, v + s / 100) for s in (0, 1)
               for f, d, v in ((0.01, 0.60, 0.70), (0.05, 0.90, 0.93), (1.0, 0.95, 0.95))]
    assert headroom(records, 0.01) == pytest.approx(0.25) and headroom(records, 0.05) == pytest.approx(0.02)
    assert headroom(records, 0.05, "test") == pytest.approx(0.05)  # fake_record's mean region
    assert headroom_met(records, 0.01) and not headroom_met(records, 0.05)  # decided on validation
    assert headroom(records, 0.1) is None and not headroom_met(records, 0.1)
    assert headroom([r for r in records if r["method"] == "nnunet"], 0.01) is None  # no bound yet
    report = markdown_report(records)
    assert "## Headroom" in report and "| 1% | 2 | 0.705 -> 0.955 | +0.250 | yes |" in report
    assert "| 5% | 2 | 0.935 -> 0.955 | +0.020 | no | 0.935 -> 0.985 | +0.050 | yes |" in report
    assert "## Headroom" not in markdown_report([r for r in records if r["labeled_fraction"] != 1.0])


def test_table_runs_order_self_training_after_its_supervised_run_and_the_upper_bound_once_per_seed():
    runs = table_runs(["memcif", "nnunet-all", "self-training", "nnunet"], [0.01, 0.05], [0, 1])
    assert [(r.method, r.fraction, r.seed) for r in runs[:7]] == [
        ("nnunet", 0.01, 0), ("self-training", 0.01, 0), ("memcif", 0.01, 0), ("nnunet", 0.05, 0),
        ("self-training", 0.05, 0), ("memcif", 0.05, 0), ("nnunet-all", 1.0, 0)]
    assert len(runs) == 14 and runs[-1] == Run("nnunet-all", 1.0, 1)
    with pytest.raises(PluginUserError, match="add nnunet"):
        check_arguments([0.1], ["self-training"], 1, 1, [0])
    with pytest.raises(PluginUserError, match="--configuration 3d_lowres"):
        check_arguments([0.1], ["nnunet"], 1, 1, [0], "3d_lowres")
    with pytest.raises(PluginUserError, match="--batch-size"):
        check_arguments([0.1], ["nnunet"], 1, 1, [0], "2d", 0)


def test_chosen_settings_are_checked_and_a_finished_run_is_reused_only_with_its_own_setting(tmp_path):
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PluginUserError, match="--consistency-weight must be a number > 0"):
            check_arguments([0.1], ["memcif"], 1, 1, [0], "2d", None, weight)
    with pytest.raises(PluginUserError, match="--lr-multipliers MEM:CIF must both be numbers > 0"):
        check_arguments([0.1], ["memcif"], 1, 1, [0], "2d", None, None, (30.0, 0.0))
    assert parse_lr_multipliers("30:150") == (30.0, 150.0) and parse_lr_multipliers("2") == (2.0, 2.0)
    for text in ("a:b", "0:1", "1:2:3", "nan", "inf:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected MEM:CIF"):
            parse_lr_multipliers(text)
    setting = {"labeled_fraction": 0.01, "epochs": 15, "iterations_per_epoch": 40, "seed": 0, "batch_size": 16,
               "consistency_weight": 0.3}
    check_same_setting(str(tmp_path), setting)  # a run not started yet
    # an interrupted run: its setting.json; a finished one: its run.json (what else a record holds does not matter)
    for name, recorded in (("setting.json", {**setting, "consistency_weight": 1.0}),
                           ("run.json", {k: v for k, v in setting.items() if k not in ("batch_size",
                                                                                     "consistency_weight")})):
        (tmp_path / name).write_text(json.dumps({**recorded, "test_cases": ["t1"]}))
        check_same_setting(str(tmp_path), recorded)
    with pytest.raises(PluginUserError, match=r"another setting: batch_size None \(now 16\), consistency_weight "
                                              r"None \(now 0.3\)\. "):
        check_same_setting(str(tmp_path), setting)
    (tmp_path / "run.json").unlink()
    with pytest.raises(PluginUserError, match=r"another setting: consistency_weight 1.0 \(now 0.3\)\. "):
        check_same_setting(str(tmp_path), setting)


def test_table_trainers_need_their_setting(monkeypatch):
    monkeypatch.delenv(TABLE_RUN_VARIABLE, raising=False)
    with pytest.raises(PluginUserError, match="nnunet-mem-cif table"):
        table_run_setting()
    monkeypatch.setenv(TABLE_RUN_VARIABLE, "{not json")
    with pytest.raises(PluginUserError, match="not valid JSON"):
        table_run_setting()
    monkeypatch.setenv(TABLE_RUN_VARIABLE, json.dumps({"labeled_fraction": 0.1, "epochs": 2}))
    with pytest.raises(PluginUserError, match="iterations_per_epoch, seed"):
        table_run_setting()


def test_table_refuses_bad_input_in_one_line(workspace, tmp_path):
    result = workspace.run("nnunet-mem-cif", "table", "--dataset-id", str(DATASET_ID), "--output-dir",
                           str(tmp_path / "out"), "--fractions", "1.5", check=False)
    assert result.returncode == 2 and "fractions must lie in (0, 1]" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "raw" / "imagesTs").mkdir(parents=True)
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "nnUNetPlans.json").write_text("{}")
    with pytest.raises(PluginUserError, match=r"raw/imagesTs is missing or empty"):
        check_dataset(str(tmp_path / "raw"), str(tmp_path / "pre"))
    with pytest.raises(PluginUserError, match="nnUNetv2_plan_and_preprocess"):
        check_dataset(str(tmp_path / "raw"), str(tmp_path))


@pytest.mark.e2e
def test_table_command_trains_every_method_through_nnunet_and_resumes(workspace, tmp_path):
    """Every row of the table with a 1-epoch schedule through nnUNetv2_train / _predict, then a rerun skips all."""
    output = tmp_path / "table"
    args = ("nnunet-mem-cif", "table", "--dataset-id", str(DATASET_ID), "--output-dir", str(output),
            "--fractions", "0.5", "--epochs", "1", "--iterations", "2", "--seeds", "3", "--device", "cpu",
            "--consistency-weight", "0.5", "--lr-multipliers", "20:100")
    workspace.run(*args, timeout=2400)
    records = load_records(str(output))
    assert [r["method"] for r in records] == DEFAULT_METHODS
    *fraction_runs, upper_bound = records
    # same fold, fraction and seed: every method saw the same labeled cases, the SSL ones the rest as unlabeled
    assert len({tuple(r["labeled_cases"]) for r in fraction_runs}) == 1
    assert all(len(r["labeled_cases"]) == 2 and r["unlabeled_pool"] == 2 for r in fraction_runs)
    assert upper_bound["labeled_fraction"] == 1 and len(upper_bound["labeled_cases"]) == 4
    for r in records:
        assert r["test_cases"] == ["test_000", "test_001"] and r["epochs"] == 1 and r["seed"] == 3
        assert 0 <= r["mean"]["mean"]["dice"] <= 1 and r["versions"]["nnunetv2"].startswith("2.8")
        assert set(r["case_dice"]) == {"test_000", "test_001"}  # per-case metrics kept for the paired report
        # and per validation case, so that a choice can be made again from the committed run.json
        assert len(r["validation_case_dice"]) == r["validation_cases"] > 0
        log = (output / "runs" / r["method"] / f"fraction{r['labeled_fraction']:g}_seed3" / "train.log").read_text()
        assert f"-tr {r['trainer']}" in log and log.count("Epoch time:") == 1
        assert bool(re.search(r"SSL: supervised loss", log)) == METHODS[r["method"]].unlabeled
        # the chosen settings reach the rows they apply to, and only those
        assert ("SSL: consistency weight 0.5 (" in log) == (r.get("consistency_weight") == 0.5) == \
            METHODS[r["method"]].unlabeled
        multipliers = (r.get("mem_lr_multiplier"), r.get("cif_lr_multiplier"))
        assert ("MEM lr x20, CIF lr x100" in log) == (multipliers == (20, 100)) == METHODS[r["method"]].fusion
    # self-training: the hidden-label cases preprocessed from the supervised run's predictions, the rest nnU-Net's
    self_training = output / "runs" / "self-training" / "fraction0.5_seed3"
    hidden = json.loads((self_training / "run.json").read_text())
    subset_file = next(self_training.glob("nnUNet_results/*/*/fold_0/labeled_subset.json"))
    hidden_cases = json.loads(subset_file.read_text())["unlabeled"]
    assert {c + ".nii.gz" for c in hidden_cases} <= set(os.listdir(self_training / "pseudo_labels"))
    folder = next((self_training / "pseudo_labeled").iterdir())
    for name in os.listdir(folder):
        assert os.path.islink(folder / name) == (name.split(".")[0].removesuffix("_seg") not in hidden_cases)
    assert set(hidden["stage_seconds"]) == {"first_training", "pseudo_label_prediction", "pseudo_label_preprocessing",
                                            "second_training"}
    table = (output / "results.md").read_text()
    rows = table.split("\n## ")[0].splitlines()  # the table itself, before the convergence and paired sections
    assert len([line for line in rows if line.startswith("| 50% |")]) == len(DEFAULT_METHODS) - 1
    assert "| 100% | nnU-Net, all labels (upper bound) | 4 |" in table and "## Paired differences" in table
    again = workspace.run(*args)
    assert again.stdout.count("done before, skipped") == len(DEFAULT_METHODS)
    # on another machine the supervised run is its committed run.json and metrics.json only (evidence_table.sh
    # restores them): self-training trains its own first model, and says so
    restored = tmp_path / "restored"
    supervised = Path("runs") / "nnunet" / "fraction0.5_seed3"
    (restored / supervised).mkdir(parents=True)
    for name in ("run.json", "metrics.json"):
        (restored / supervised / name).write_bytes((output / supervised / name).read_bytes())
    workspace.run(*args[:5], str(restored), *args[6:], "--methods", "nnunet", "self-training",
                  timeout=1200)
    elsewhere = json.loads((restored / "runs" / "self-training" / "fraction0.5_seed3" / "run.json").read_text())
    first = restored / "runs" / "self-training" / "fraction0.5_seed3" / "first_training"
    assert "not on this machine" in elsewhere["first_model"] and "first_model" not in hidden
    assert elsewhere["stage_seconds"]["first_training"] == json.loads((first / "train_seconds.json").read_text())
    assert elsewhere["labeled_cases"] == hidden["labeled_cases"] and "-tr nnUNetTrainer_table" in \
        (first / "train.log").read_text()
    # a finished run is not reused for another setting: the first run it applies to stops the command
    other = workspace.run(*args[:-4], "--consistency-weight", "2", check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "mean-teacher/fraction0.5_seed3 was trained with another setting: consistency_weight 0.5 (now 2.0). " \
        in other.stderr
    assert os.path.isfile(os.path.join(output, "results.png"))
    assert DATASET_NAME in table


@pytest.mark.e2e
def test_an_interrupted_table_run_resumes_at_its_last_epoch(workspace, tmp_path):
    """The background table is killed whenever its session ends: rerunning the command resumes the run from the
    checkpoint of its last finished epoch (not from scratch) and counts the time trained before."""
    import signal
    import subprocess
    import time

    from nnunet_mem_cif.discovery import console_script
    output = tmp_path / "table"
    args = [console_script("nnunet-mem-cif"), "table", "--dataset-id", str(DATASET_ID), "--output-dir", str(output),
            "--methods", "nnunet", "--fractions", "0.5", "--epochs", "6", "--iterations", "2", "--seeds", "4",
            "--device", "cpu"]
    run_dir = output / "runs" / "nnunet" / "fraction0.5_seed4"
    latest = Path(fold_folder(str(run_dir), DATASET_NAME, METHODS["nnunet"].trainer, 0)) / "checkpoint_latest.pth"
    first = subprocess.Popen(args, env=workspace.env, cwd=workspace.root, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while not latest.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert latest.exists(), "no per-epoch checkpoint was written"
    first.send_signal(signal.SIGTERM)  # as a session's end or a scheduler's limit stops it
    assert first.wait(timeout=120) != 0 and not (run_dir / "run.json").exists()
    rerun = workspace.run(*args, timeout=1200)
    assert "nnUNetv2_train (resumed)" in rerun.stdout + rerun.stderr
    record = json.loads((run_dir / "run.json").read_text())
    before, resumed = (run_dir / "train.log").read_text().split("\n$ ")  # the earlier attempt's log is kept
    assert re.search(r": Epoch 0$", before, re.MULTILINE) and "--c" in resumed.splitlines()[0]
    assert not re.search(r": Epoch 0$", resumed, re.MULTILINE)  # continued, not started again
    assert 0 < resumed.count("Epoch time:") < 6
    assert 0 < record["resumed_after_seconds"] < record["train_seconds"]


def test_a_failed_nnunet_step_is_one_line_naming_its_last_output_and_log(tmp_path):
    from nnunet_mem_cif.nnunet_commands import StepFailed, run_step
    log = tmp_path / "step.log"
    failing = [sys.executable, "-c", "import sys; print('working'); print('CUDA is not available'); sys.exit(3)"]
    with pytest.raises(StepFailed) as raised:
        run_step("[1/1] nnUNetv2_train", failing, dict(os.environ), str(log))
    message = str(raised.value)
    assert "exit code 3" in message and "CUDA is not available" in message and str(log) in message
    assert "working" in log.read_text()  # the whole output is kept in the log
    assert isinstance(raised.value, PluginUserError)  # so that the command line shows one line, exit code 2


def test_a_running_nnunet_step_writes_its_log_line_by_line(tmp_path):
    """A training runs for hours: its log must be readable before it ends (a block-buffered file stayed empty)."""
    from nnunet_mem_cif.nnunet_commands import run_step
    log, seen = tmp_path / "step.log", tmp_path / "seen"
    # the step waits until it has seen its own first line in the log, and fails if it never does
    script = ("import os, sys, time; print('epoch 0', flush=True)\n"
              "for _ in range(200):\n"
              "    if 'epoch 0' in open(sys.argv[1]).read(): open(sys.argv[2], 'w').close(); break\n"
              "    time.sleep(0.05)\n"
              "else: sys.exit(4)")
    run_step("[1/1] nnUNetv2_train", [sys.executable, "-c", script, str(log), str(seen)], dict(os.environ), str(log))
    assert seen.exists()


def test_a_resumed_run_counts_the_epochs_trained_before_its_interruption(tmp_path):
    import torch

    def checkpoint(name: str, starts: list, ends: list) -> None:
        torch.save({"logging": {"epoch_start_timestamps": starts, "epoch_end_timestamps": ends}},
                   str(tmp_path / f"checkpoint_{name}.pth"))

    checkpoint("best", [0.0], [50.0])  # never resumed from while a latest or final checkpoint exists
    checkpoint("latest", [100.0, 170.0, 250.0], [160.0, 240.0, 300.0])
    assert trained_before_resume(str(tmp_path)) == (3, pytest.approx(60 + 70 + 50))
    checkpoint("final", [100.0, 170.0, 250.0, 300.0], [160.0, 240.0, 300.0, 340.0])  # nnU-Net resumes from it first
    assert trained_before_resume(str(tmp_path)) == (4, pytest.approx(60 + 70 + 50 + 40))
