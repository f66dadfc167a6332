"""``nnunet-mem-cif benchmark``: the paper's table (docs/design.md §4) on any fully labeled nnU-Net dataset.

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

from nnunet_mem_cif.atomic import is_within, write_atomically, write_text_atomically
from nnunet_mem_cif.errors import PluginUserError

# docs/design.md §4: command-line name -> (row of the table, trainer)
METHODS: Dict[str, tuple] = {
    "nnunet": ("supervised nnU-Net", "nnUNetTrainer_benchmark"),
    "mean-teacher": ("Mean Teacher", "MeanTeacherTrainer_benchmark"),
    "memcif-supervised": ("MEM + CIF, supervised", "MemCifTrainer_noSSL_benchmark"),
    "no-mem": ("no MEM", "MemCifSemiTrainer_noMEM_benchmark"),
    "no-cif": ("no CIF", "MemCifSemiTrainer_noCIF_benchmark"),
    "memcif": ("full method", "MemCifSemiTrainer_benchmark"),
}
SEMI_SUPERVISED = ("mean-teacher", "no-mem", "no-cif", "memcif")  # the methods that train on unlabeled cases
BENCHMARK_OUTPUTS = ("runs", "results.md", "results.csv", "results.png")
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


def check_arguments(fractions: Sequence[float], methods: Sequence[str], epochs: int, iterations_per_epoch: int,
                    seeds: Sequence[int]) -> None:
    """Arguments no table can come from (NaN fails every range comparison, so it is refused too)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkError(f"--methods: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise BenchmarkError(f"--fractions: labeled fractions must lie in (0, 1], got {', '.join(map(str, bad))}")
    for flag, values in (("--methods", methods), ("--fractions", fractions), ("--seeds", seeds)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:
            raise BenchmarkError(f"{flag}: {', '.join(repeated)} given more than once (a run is one method, "
                                 f"fraction and seed); give each once.")
    for flag, value in (("--epochs", epochs), ("--iterations", iterations_per_epoch)):
        if value < 1:
            raise BenchmarkError(f"{flag} must be at least 1, got {value}")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad:
        raise BenchmarkError(f"--seeds must lie between 0 and 2**32 - 1, got {', '.join(map(str, bad))}")


def parse_fold(fold) -> int:
    """``--fold`` as an int; fold 'all' is refused: nnU-Net validates it on its own training cases, so the cases
    whose labels a run hides would be validation cases too."""
    if str(fold) == "all":
        raise BenchmarkError("--fold all is not supported: nnU-Net's fold 'all' validates on its training cases, "
                             "so the benchmark's unlabeled cases would be validation cases too. Give a fold number.")
    try:
        return int(fold)
    except ValueError:
        raise BenchmarkError(f"--fold must be a fold number (0, 1, ...), got {fold!r}") from None


def fold_training_cases(preprocessed_dataset: str, fold: int) -> List[str]:
    """The training cases of ``fold``, as nnU-Net's do_split will pick them, or a BenchmarkError for a fold the
    dataset cannot have (where nnU-Net would silently train on a random 80:20 split instead)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = PlansManager(os.path.join(preprocessed_dataset, "nnUNetPlans.json"))
    if CONFIGURATION not in plans.available_configurations:
        raise BenchmarkError(f"{preprocessed_dataset}/nnUNetPlans.json has no {CONFIGURATION} configuration: run "
                             f"nnUNetv2_plan_and_preprocess -d ID -c {CONFIGURATION}")
    splits_file = os.path.join(preprocessed_dataset, "splits_final.json")
    if os.path.isfile(splits_file):
        splits = load_json(splits_file)
        if not 0 <= fold < len(splits):
            raise BenchmarkError(f"--fold {fold}: {splits_file} defines folds 0..{len(splits) - 1}. Choose one of "
                                 f"them.")
        return list(splits[fold]["train"])
    folder = os.path.join(preprocessed_dataset, plans.get_configuration(CONFIGURATION).data_identifier)
    identifiers = sorted(infer_dataset_class(folder).get_identifiers(folder)) if os.path.isdir(folder) else []
    if not identifiers:
        raise BenchmarkError(f"{folder} holds no preprocessed cases: run nnUNetv2_plan_and_preprocess -d ID -c "
                             f"{CONFIGURATION}")
    if len(identifiers) < 5:
        raise BenchmarkError(f"{len(identifiers)} training cases are too few for nnU-Net's 5-fold split (at least "
                             f"5): add cases, or write your own {splits_file}.")
    if not 0 <= fold < 5:
        raise BenchmarkError(f"--fold {fold}: nnU-Net's 5-fold split has folds 0..4 (or write your own "
                             f"{splits_file}).")
    return list(generate_crossval_split(identifiers, seed=12345, n_splits=5)[fold]["train"])


def check_fractions_leave_unlabeled_cases(training_cases: Sequence[str], fractions: Sequence[float],
                                          methods: Sequence[str], seeds: Sequence[int], fold: int) -> None:
    """A semi-supervised run needs at least one training case whose labels are hidden."""
    from nnunet_mem_cif.ssl.labeled_subset import split_labeled_fraction
    semi_supervised = [m for m in methods if m in SEMI_SUPERVISED]
    for fraction in fractions:
        for seed in seeds:
            if semi_supervised and not split_labeled_fraction(training_cases, fraction, seed)[1]:
                raise BenchmarkError(f"--fractions {fraction:g} keeps all {len(training_cases)} training cases of "
                                     f"fold {fold} labeled, so {', '.join(semi_supervised)} would have no unlabeled "
                                     f"case. Use a smaller fraction, or only supervised methods at this one.")


def is_benchmark_output(folder: str) -> bool:
    """Whether ``folder`` holds only what this command writes (runs/, results.*, temporaries of those)."""
    return all(name in BENCHMARK_OUTPUTS or name.startswith(".partial-") for name in os.listdir(folder))


def check_output_dir(output_dir: str, protected: Sequence[str]) -> None:
    """The output may be new, empty or an earlier benchmark output (finished runs are kept, interrupted ones
    resumed); never a dataset folder of nnU-Net's, nor a folder that holds anything else."""
    for folder in protected:
        if is_within(output_dir, folder) or is_within(folder, output_dir):
            raise BenchmarkError(f"--output-dir {output_dir} and the dataset folder {folder} overlap; the dataset "
                                 f"is only read. Choose an output folder outside it.")
    if os.path.lexists(output_dir) and (os.path.islink(output_dir) or not os.path.isdir(output_dir)):
        raise BenchmarkError(f"--output-dir {output_dir} exists and is not a folder. Choose another.")
    if os.path.isdir(output_dir) and not is_benchmark_output(output_dir):
        raise BenchmarkError(f"--output-dir {output_dir} holds files this command did not write, so it does not "
                             f"write into it. Choose a new or empty folder, or an earlier benchmark output.")


def check_no_test_case_in_training(raw_dataset: str, file_ending: str, reader_class: type) -> None:
    """No imagesTs case may be an imagesTr case, by name or by content (nnunet_mem_cif.leakage).

    Done once per command, before any run, rather than at every run's training start: decoding every image of a
    BraTS-size dataset takes minutes. The trainers then check the unlabeled pool by name only.
    """
    from nnunet_mem_cif.leakage import TEST_FOLDER, TRAINING_FOLDER, case_files, check_content_disjoint, \
        check_names_disjoint, fingerprint_files, relative_names
    training, test = (case_files(os.path.join(raw_dataset, f), file_ending) for f in (TRAINING_FOLDER, TEST_FOLDER))
    advice = "Keep each case in imagesTr or in imagesTs, not both (then plan and preprocess again)."
    check_names_disjoint(TRAINING_FOLDER, training, {TEST_FOLDER: test}, raw_dataset, advice, BenchmarkError)
    names = relative_names(raw_dataset, training) + relative_names(raw_dataset, test)
    processes = 1 if len(names) < 64 else min(8, os.cpu_count() or 1)
    fingerprints = fingerprint_files(raw_dataset, names, reader_class, processes, error=BenchmarkError)
    check_content_disjoint(raw_dataset, fingerprints, [(TRAINING_FOLDER, TEST_FOLDER)], {TRAINING_FOLDER: advice},
                           BenchmarkError)


def run_benchmark(dataset_id: int, output_dir: str, fractions: Sequence[float], methods: Sequence[str],
                  epochs: int, iterations_per_epoch: int, seeds: Sequence[int], device: str, fold=0,
                  command: Optional[str] = None) -> List[dict]:
    """Train, predict and evaluate every missing (seed, fraction, method), then write the table.

    Everything is checked before the output folder is created: the arguments, the dataset (plans, preprocessed
    cases, a labeled test set), the fold (as nnU-Net will split), that every fraction leaves the semi-supervised
    methods unlabeled cases, that no test case is a training case, and the output folder.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    check_arguments(fractions, methods, epochs, iterations_per_epoch, seeds)
    fold = parse_fold(fold)
    raw_root, preprocessed_root = os.environ.get("nnUNet_raw"), os.environ.get("nnUNet_preprocessed")
    if not raw_root or not preprocessed_root:
        raise BenchmarkError("set nnUNet_raw, nnUNet_preprocessed (and nnUNet_results) as for nnU-Net itself")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net's message says where it looked
        raise BenchmarkError(f"--dataset-id {dataset_id}: {e}") from e
    raw_dataset = os.path.join(raw_root, dataset_name)
    preprocessed_dataset = os.path.join(preprocessed_root, dataset_name)
    check_dataset(raw_dataset, preprocessed_dataset)
    training_cases = fold_training_cases(preprocessed_dataset, fold)
    check_fractions_leave_unlabeled_cases(training_cases, fractions, methods, seeds, fold)
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, [raw_dataset, preprocessed_dataset])
    plans = PlansManager(os.path.join(preprocessed_dataset, "nnUNetPlans.json"))
    check_no_test_case_in_training(raw_dataset, load_json(os.path.join(preprocessed_dataset, "dataset.json"))
                                   ["file_ending"], plans.image_reader_writer_class)
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
