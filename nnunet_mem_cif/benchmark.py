"""``nnunet-mem-cif benchmark``: the paper's table (DESIGN §4) on any fully labeled nnU-Net dataset.

For every seed, labeled fraction and method: ``nnUNetv2_train`` (the method's ``*_benchmark`` trainer, same fold),
``nnUNetv2_predict`` on the dataset's ``imagesTs``, evaluation against ``labelsTs``, and a ``run.json`` with the
metrics, the labeled cases, schedule, seed, versions and wall times. Each run has its own ``nnUNet_results`` under
``OUTPUT/runs/``, so runs never overwrite each other; a run with a ``run.json`` is done and skipped, an interrupted
one resumes from its last checkpoint (``--c``). ``results.md``, ``results.csv`` and ``results.png`` are written
from all finished runs at the end (and by ``--report-only``).
"""
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, List, Optional, Sequence

from nnunet_mem_cif.atomic import write_atomically, write_text_atomically
from nnunet_mem_cif.errors import PluginUserError

# DESIGN §4: command-line name -> (row of the table, trainer)
METHODS: Dict[str, tuple] = {
    "nnunet": ("supervised nnU-Net", "nnUNetTrainer_benchmark"),
    "mean-teacher": ("Mean Teacher", "MeanTeacherTrainer_benchmark"),
    "memcif-supervised": ("MEM + CIF, supervised", "MemCifTrainer_noSSL_benchmark"),
    "no-mem": ("no MEM", "MemCifSemiTrainer_noMEM_benchmark"),
    "no-cif": ("no CIF", "MemCifSemiTrainer_noCIF_benchmark"),
    "memcif": ("full method", "MemCifSemiTrainer_benchmark"),
}
REGIONS = ("whole_tumor", "tumor_core", "enhancing_tumor", "mean")
REGION_SHORT = {"whole_tumor": "WT", "tumor_core": "TC", "enhancing_tumor": "ET", "mean": "mean"}
CONFIGURATION = "3d_fullres"


class BenchmarkError(PluginUserError, ValueError):
    """The dataset or the arguments cannot give a table; the message says what to do."""


@dataclass(frozen=True)
class Run:
    method: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return os.path.join(self.method, f"fraction{self.fraction:g}_seed{self.seed}")

    @classmethod
    def of_record(cls, record: dict) -> "Run":
        return cls(record["method"], record["labeled_fraction"], record["seed"])

    def folder(self, output_dir: str) -> str:
        """Everything of this run: run.json, logs, predictions, and its own nnUNet_results."""
        return os.path.join(output_dir, "runs", self.name)


def fold_folder(run_dir: str, dataset_name: str, trainer: str, fold: int) -> str:
    """Where nnUNetv2_train writes a run's checkpoints, training log and fold validation."""
    return os.path.join(run_dir, "nnUNet_results", dataset_name, f"{trainer}__nnUNetPlans__{CONFIGURATION}",
                        f"fold_{fold}")


def versions() -> Dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "nnunetv2", "dynamic_network_architectures", "batchgeneratorsv2", "nnunet-mem-cif"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def device_description(device: str) -> str:
    import torch
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def check_dataset(raw_dataset: str, preprocessed_dataset: str) -> None:
    """The table needs planned + preprocessed 3d_fullres data and a labeled test set; say how to get them."""
    plans = os.path.join(preprocessed_dataset, "nnUNetPlans.json")
    if not os.path.isfile(plans):
        raise BenchmarkError(f"{plans} not found: run nnUNetv2_plan_and_preprocess -d ID -c {CONFIGURATION} first")
    for folder in ("imagesTs", "labelsTs"):
        path = os.path.join(raw_dataset, folder)
        if not os.path.isdir(path) or not any(f.endswith(".nii.gz") for f in os.listdir(path)):
            raise BenchmarkError(f"{path} is missing or empty: the table is scored on held-out test cases with "
                                 f"labels (nnunet-mem-cif convert-brats2019 writes imagesTs and labelsTs)")


def run_benchmark(dataset_id: int, output_dir: str, fractions: Sequence[float], methods: Sequence[str],
                  epochs: int, iterations_per_epoch: int, seeds: Sequence[int], device: str, fold: int = 0,
                  command: Optional[str] = None) -> List[dict]:
    """Train, predict and evaluate every missing (seed, fraction, method), then write the table."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    bad = [f for f in fractions if not 0 < f < 1]
    if bad:
        raise BenchmarkError(f"labeled fractions must lie in (0, 1), got {bad}")
    if nnUNet_raw is None or nnUNet_preprocessed is None:
        raise BenchmarkError("set nnUNet_raw, nnUNet_preprocessed (and nnUNet_results) as for nnU-Net itself")
    dataset_name = maybe_convert_to_dataset_name(dataset_id)
    raw_dataset = os.path.join(nnUNet_raw, dataset_name)
    check_dataset(raw_dataset, os.path.join(nnUNet_preprocessed, dataset_name))
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    runs = [Run(m, f, s) for s in seeds for f in fractions for m in methods]
    records = []
    for index, run in enumerate(runs, 1):
        records.append(run_one(run, f"[{index}/{len(runs)}]", dataset_id, dataset_name, raw_dataset, output_dir,
                               epochs, iterations_per_epoch, device, fold, command))
        write_report(output_dir)
    return records


def run_one(run: Run, step: str, dataset_id: int, dataset_name: str, raw_dataset: str, output_dir: str,
            epochs: int, iterations_per_epoch: int, device: str, fold: int, command: Optional[str]) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

    from nnunet_mem_cif.demo import nnunet_command_environment, run_step
    from nnunet_mem_cif.discovery import console_script
    from nnunet_mem_cif.evaluation import evaluate_folders, write_results
    from nnunet_mem_cif.trainers.benchmark import BENCHMARK_VARIABLE

    run_dir = run.folder(output_dir)
    record_file = os.path.join(run_dir, "run.json")
    label, trainer = METHODS[run.method]
    if os.path.isfile(record_file):
        print(f"{step} {label}, {run.fraction:.0%} labeled, seed {run.seed}: done before, skipped")
        return load_json(record_file)
    os.makedirs(run_dir, exist_ok=True)
    setting = {"labeled_fraction": run.fraction, "epochs": epochs, "iterations_per_epoch": iterations_per_epoch,
               "seed": run.seed}
    env = nnunet_command_environment(device, raw=os.environ["nnUNet_raw"],
                                     preprocessed=os.environ["nnUNet_preprocessed"],
                                     results=os.path.join(run_dir, "nnUNet_results"))
    env[BENCHMARK_VARIABLE] = json.dumps(setting)
    fold_dir = fold_folder(run_dir, dataset_name, trainer, fold)
    resume = any(os.path.isfile(os.path.join(fold_dir, f"checkpoint_{k}.pth")) for k in ("latest", "final"))
    title = f"{step} {label}, {run.fraction:.0%} labeled, seed {run.seed}"

    start = time.time()
    run_step(f"{title}: nnUNetv2_train{' (resumed)' if resume else ''}",
             [console_script("nnUNetv2_train"), str(dataset_id), CONFIGURATION, str(fold), "-tr", trainer, "-device",
              device] + (["--c"] if resume else []), env, os.path.join(run_dir, "train.log"),
             progress_pattern=r"Epoch time:", total=epochs)
    train_seconds = time.time() - start

    predictions = os.path.join(run_dir, "predictions")
    shutil.rmtree(predictions, ignore_errors=True)  # a prediction interrupted before is redone whole
    start = time.time()
    run_step(f"{title}: nnUNetv2_predict", [console_script("nnUNetv2_predict"), "-i",
             os.path.join(raw_dataset, "imagesTs"), "-o", predictions, "-d", str(dataset_id), "-c", CONFIGURATION,
             "-tr", trainer, "-f", str(fold), "-device", device, "-npp", "1", "-nps", "1"], env,
             os.path.join(run_dir, "predict.log"))
    predict_seconds = time.time() - start

    metrics = evaluate_folders(predictions, os.path.join(raw_dataset, "labelsTs"))
    write_results(metrics, os.path.join(run_dir, "metrics.json"))
    subset = load_json(os.path.join(fold_dir, "labeled_subset.json"))
    record = {"method": run.method, "row": label, "trainer": trainer, "dataset": dataset_name, "fold": fold,
              "configuration": CONFIGURATION, **setting, "labeled_cases": subset["labeled"],
              "unlabeled_pool": len(subset["unlabeled"]), "test_cases": sorted(metrics["cases"]),
              "mean": metrics["mean"], "train_seconds": round(train_seconds, 1),
              "predict_seconds": round(predict_seconds, 1), "device": device_description(device),
              "versions": versions(), "command": command}
    write_atomically(record_file, lambda partial: save_json(record, partial, sort_keys=False))
    return record


# ---------------------------------------------------------------------------------------------- the table
def load_records(output_dir: str) -> List[dict]:
    records = []
    runs_dir = os.path.join(output_dir, "runs")
    for root, _, files in os.walk(runs_dir):
        if "run.json" in files:
            with open(os.path.join(root, "run.json")) as f:
                records.append(json.load(f))
    order = list(METHODS)
    return sorted(records, key=lambda r: (r["labeled_fraction"], order.index(r["method"]), r["seed"]))


def _mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _commands_line(records: List[dict]) -> str:
    """Every distinct command that made these runs (a table can combine runs of several commands)."""
    commands = list(dict.fromkeys(r["command"] for r in records if r.get("command")))
    if not commands:
        return "- command: not recorded"
    return ("- command: " if len(commands) == 1 else "- commands: ") + "; ".join(f"`{c}`" for c in commands)


def markdown_report(records: List[dict]) -> str:
    """Methods x fractions, Dice and Sensitivity per region and their mean (mean ± std over seeds)."""
    if not records:
        return "no finished runs yet\n"
    first = records[0]
    seeds = sorted({r["seed"] for r in records})
    schedules = sorted({(r["epochs"], r["iterations_per_epoch"]) for r in records})
    lines = [f"# {first['dataset']}: {len(first['test_cases'])} held-out test cases, fold {first['fold']}, "
             f"{first['configuration']}",
             "",
             f"- seeds: {', '.join(map(str, seeds))} (a seed fixes the labeled cases, the same for every method, "
             f"and the initialisation); values are the mean over test cases, then mean ± std over seeds",
             "- schedule: " + "; ".join(f"{e} epochs x {i} iterations" for e, i in schedules),
             f"- device: {first['device']}; versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items()),
             _commands_line(records),
             "",
             "| labeled | method | labeled cases | " + " | ".join(f"Dice {REGION_SHORT[r]}" for r in REGIONS) + " | "
             + " | ".join(f"Sens {REGION_SHORT[r]}" for r in REGIONS) + " | train [min] |",
             "|---|---|---|" + "---|" * (2 * len(REGIONS) + 1)]
    groups: Dict[tuple, List[dict]] = {}
    for record in records:
        groups.setdefault((record["labeled_fraction"], record["method"]), []).append(record)
    for (fraction, method), group in groups.items():
        cells = [_mean_std([r["mean"][region][metric] for r in group])
                 for metric in ("dice", "sensitivity") for region in REGIONS]
        labeled = "/".join(sorted({str(len(r["labeled_cases"])) for r in group}))
        minutes = statistics.mean(r["train_seconds"] for r in group) / 60
        lines.append(f"| {fraction:.0%} | {group[0]['row']} | {labeled} | " + " | ".join(cells)
                     + f" | {minutes:.1f} |")
    return "\n".join(lines) + "\n"


def write_csv(records: List[dict], handle) -> None:
    writer = csv.writer(handle)
    writer.writerow(["labeled_fraction", "method", "row", "trainer", "seed", "labeled_cases", "region", "dice",
                     "sensitivity", "hd95", "test_cases", "epochs", "iterations_per_epoch", "train_seconds",
                     "predict_seconds"])
    for r in records:
        for region in REGIONS:
            m = r["mean"][region]
            writer.writerow([r["labeled_fraction"], r["method"], r["row"], r["trainer"], r["seed"],
                             len(r["labeled_cases"]), region, m["dice"], m["sensitivity"], m["hd95"],
                             len(r["test_cases"]), r["epochs"], r["iterations_per_epoch"], r["train_seconds"],
                             r["predict_seconds"]])


def plot_report(records: List[dict], path: str) -> None:
    """Grouped bars: one panel per metric and region, labeled fractions on x, one bar per method."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fractions = sorted({r["labeled_fraction"] for r in records})
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    fig, axes = plt.subplots(2, len(REGIONS), figsize=(4 * len(REGIONS), 7), sharey=True, squeeze=False)
    width = 0.8 / max(1, len(methods))
    for row, metric in enumerate(("dice", "sensitivity")):
        for col, region in enumerate(REGIONS):
            ax = axes[row][col]
            for i, method in enumerate(methods):
                values = [np.mean([r["mean"][region][metric] for r in records
                                   if r["method"] == method and r["labeled_fraction"] == f] or [np.nan])
                          for f in fractions]
                ax.bar(np.arange(len(fractions)) + (i - (len(methods) - 1) / 2) * width, values, width,
                       label=METHODS[method][0])
            ax.set_xticks(np.arange(len(fractions)), [f"{f:.0%}" for f in fractions])
            ax.set_title(f"{'Dice' if metric == 'dice' else 'Sensitivity'} {REGION_SHORT[region]}")
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.supxlabel("labeled fraction")
    fig.tight_layout()
    write_atomically(path, lambda partial: fig.savefig(partial, dpi=80))
    plt.close(fig)


def write_report(output_dir: str) -> List[str]:
    """results.md / .csv / .png from every finished run (each file swapped in whole)."""
    records = load_records(output_dir)
    written = []
    for name, write in (("results.md", lambda f: f.write(markdown_report(records))),
                        ("results.csv", lambda f: write_csv(records, f))):
        written.append(write_text_atomically(os.path.join(output_dir, name), write))
    if records:
        plot_report(records, os.path.join(output_dir, "results.png"))
        written.append(os.path.join(output_dir, "results.png"))
    return written


def command_line() -> str:
    return " ".join(["nnunet-mem-cif"] + sys.argv[1:])
