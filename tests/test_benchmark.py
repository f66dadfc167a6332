"""The paper's table: the *_benchmark trainers' setting, the table writer, and the command through nnU-Net's CLI."""
import csv
import json
import os
import re
import sys

import pytest

from nnunet_mem_cif.benchmark import METHODS, REGIONS, check_dataset, load_records, markdown_report, write_report
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.trainers.benchmark import BENCHMARK_VARIABLE, benchmark_setting
from nnunet_workspace import DATASET_ID, DATASET_NAME


def fake_record(method: str, fraction: float, seed: int, dice: float) -> dict:
    mean = {region: {"dice": dice + i / 100, "sensitivity": dice / 2, "hd95": 3.0} for i, region in
            enumerate(REGIONS)}
    return {"method": method, "row": METHODS[method][0], "trainer": METHODS[method][1], "dataset": "Dataset9_X",
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
    records[1]["command"] = "nnunet-mem-cif benchmark --seeds 1"  # runs of two commands in one table
    write_fake_runs(tmp_path, records)
    assert [(r["labeled_fraction"], r["method"]) for r in load_records(str(tmp_path))][:4] == \
        [(0.01, "nnunet"), (0.01, "nnunet"), (0.01, "memcif"), (0.01, "memcif")]  # the table's row order
    written = write_report(str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["results.md", "results.csv", "results.png"]
    assert os.path.getsize(tmp_path / "results.png") > 1000
    table = (tmp_path / "results.md").read_text()
    assert "3 held-out test cases" in table and "seeds: 0, 1" in table and "5 epochs x 7 iterations" in table
    assert "- commands: `nnunet-mem-cif bench`; `nnunet-mem-cif benchmark --seeds 1`" in table
    rows = [line for line in table.splitlines() if line.startswith("| 1%") or line.startswith("| 5%")]
    assert len(rows) == 4
    assert rows[0].startswith("| 1% | supervised nnU-Net | 1 | 0.600 ± 0.000 |")
    assert rows[1].startswith("| 1% | full method | 1 | 0.850 ± 0.071 | 0.810 ± 0.000 |")
    assert rows[3].startswith("| 5% | full method | 2 |")
    with open(tmp_path / "results.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(records) * len(REGIONS)
    assert {line["region"] for line in lines} == set(REGIONS)
    assert markdown_report([]) == "no finished runs yet\n"


def test_benchmark_trainers_need_their_setting(monkeypatch):
    monkeypatch.delenv(BENCHMARK_VARIABLE, raising=False)
    with pytest.raises(PluginUserError, match="nnunet-mem-cif benchmark"):
        benchmark_setting()
    monkeypatch.setenv(BENCHMARK_VARIABLE, "{not json")
    with pytest.raises(PluginUserError, match="not valid JSON"):
        benchmark_setting()
    monkeypatch.setenv(BENCHMARK_VARIABLE, json.dumps({"labeled_fraction": 0.1, "epochs": 2}))
    with pytest.raises(PluginUserError, match="iterations_per_epoch, seed"):
        benchmark_setting()


def test_benchmark_refuses_bad_input_in_one_line(workspace, tmp_path):
    result = workspace.run("nnunet-mem-cif", "benchmark", "--dataset-id", str(DATASET_ID), "--output-dir",
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
def test_benchmark_command_trains_all_six_methods_through_nnunet_and_resumes(workspace, tmp_path):
    """Every row of the table with a 1-epoch schedule through nnUNetv2_train / _predict, then a rerun skips all."""
    output = tmp_path / "table"
    args = ("nnunet-mem-cif", "benchmark", "--dataset-id", str(DATASET_ID), "--output-dir", str(output),
            "--fractions", "0.5", "--epochs", "1", "--iterations", "2", "--seeds", "3", "--device", "cpu")
    workspace.run(*args, timeout=1800)
    records = load_records(str(output))
    assert [r["method"] for r in records] == list(METHODS)
    # same fold, fraction and seed: every method saw the same labeled cases, the SSL ones the rest as unlabeled
    assert len({tuple(r["labeled_cases"]) for r in records}) == 1
    assert all(len(r["labeled_cases"]) == 2 and r["unlabeled_pool"] == 2 for r in records)
    for r in records:
        assert r["test_cases"] == ["test_000", "test_001"] and r["epochs"] == 1 and r["seed"] == 3
        assert 0 <= r["mean"]["mean"]["dice"] <= 1 and r["versions"]["nnunetv2"].startswith("2.8")
        log = (output / "runs" / r["method"] / "fraction0.5_seed3" / "train.log").read_text()
        assert f"-tr {r['trainer']}" in log and log.count("Epoch time:") == 1
        semi_supervised = r["method"] in ("mean-teacher", "no-mem", "no-cif", "memcif")
        assert bool(re.search(r"SSL: supervised loss", log)) == semi_supervised
    table = (output / "results.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| 50%")]) == 6
    again = workspace.run(*args)
    assert again.stdout.count("done before, skipped") == 6
    assert os.path.isfile(os.path.join(output, "results.png"))
    assert DATASET_NAME in table


def test_a_failed_nnunet_step_is_one_line_naming_its_last_output_and_log(tmp_path):
    from nnunet_mem_cif.demo import StepFailed, run_step
    log = tmp_path / "step.log"
    failing = [sys.executable, "-c", "import sys; print('working'); print('CUDA is not available'); sys.exit(3)"]
    with pytest.raises(StepFailed) as raised:
        run_step("[1/1] nnUNetv2_train", failing, dict(os.environ), str(log))
    message = str(raised.value)
    assert "exit code 3" in message and "CUDA is not available" in message and str(log) in message
    assert "working" in log.read_text()  # the whole output is kept in the log
    assert isinstance(raised.value, PluginUserError)  # so that the command line shows one line, exit code 2
