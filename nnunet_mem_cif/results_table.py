"""``nnunet-mem-cif table``: the paper's table (docs/design.md §4) on any fully labeled nnU-Net dataset.

For every seed, labeled fraction and method: ``nnUNetv2_train`` (the method's ``*_table`` trainer, same fold),
``nnUNetv2_predict`` on the dataset's ``imagesTs``, evaluation against ``labelsTs``, and a ``run.json`` with the
metrics, nnU-Net's fold validation Dice (mean and per case), the labeled cases, schedule, seed, versions and wall
times; per-case test metrics are kept in the run's ``metrics.json``. Self-training (nnU-Net's advice for unlabeled
data) takes the supervised run of its fraction and seed, predicts the hidden-label cases with ``nnUNetv2_predict``,
preprocesses those predictions as nnU-Net preprocesses labels, and trains ``nnUNetTrainer`` again on both. The upper
bound trains nnU-Net on all of the fold's labels, once per seed. Each run has its own ``nnUNet_results`` under
``OUTPUT/runs/``, so runs never overwrite each other; a run with a ``run.json`` is done and skipped, an interrupted
one resumes from its last checkpoint (``--c``). ``results.md``, ``results.csv`` and ``results.png`` are written
from all finished runs at the end (and by ``--report-only``).
"""
import csv
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, List, Optional, Sequence, Set, Tuple

from nnunet_mem_cif.atomic import is_within, write_atomically, write_text_atomically
from nnunet_mem_cif.brats import REGIONS_NNUNET
from nnunet_mem_cif.errors import PluginUserError

@dataclass(frozen=True)
class Method:
    """One row of the table: its name in the table, its trainer, and what it trains on besides the labeled cases."""
    row: str
    trainer: str
    unlabeled: bool = False  # the hidden-label cases, without labels (semi-supervised)
    pseudo_labels: bool = False  # the hidden-label cases, labeled by the supervised run (self-training)
    all_labels: bool = False  # every training case of the fold labeled, whatever --fractions says (upper bound)
    fusion: bool = False  # the MEM + CIF network, whose MEM and CIF train at their own lr multipliers
    default: bool = True  # in the table without --methods; candidates are run on request


# docs/design.md §4 and docs/results.md: command-line name -> row; the order is the table's and the runs'
# (self-training needs the supervised run of its fraction and seed before it)
METHODS: Dict[str, Method] = {
    "nnunet": Method("supervised nnU-Net", "nnUNetTrainer_table"),
    "self-training": Method("nnU-Net self-training", "nnUNetTrainer_selftraining_table", pseudo_labels=True),
    "mean-teacher": Method("Mean Teacher", "MeanTeacherTrainer_table", unlabeled=True),
    "memcif-supervised": Method("MEM + CIF, supervised", "MemCifTrainer_table", fusion=True),
    "no-mem": Method("no MEM", "MemCifSemiTrainer_noMEM_table", unlabeled=True, fusion=True),
    "no-cif": Method("no CIF", "MemCifSemiTrainer_noCIF_table", unlabeled=True, fusion=True),
    "memcif": Method("full method", "MemCifSemiTrainer_table", unlabeled=True, fusion=True),
    "nnunet-all": Method("nnU-Net, all labels (upper bound)", "nnUNetTrainer_table", all_labels=True),
    # candidate changes to the method (docs/design.md §3, docs/results.md): the one chosen on validation cases joins
    # the table
    "memcif-keep-t1ce": Method("full method, T1ce never dropped", "MemCifSemiTrainer_keepT1ce_table",
                               unlabeled=True, fusion=True, default=False),
    "memcif-mask-t1ce": Method("full method, TC / ET consistency masked without T1ce",
                               "MemCifSemiTrainer_maskT1ce_table", unlabeled=True, fusion=True, default=False),
}
DEFAULT_METHODS = [name for name, method in METHODS.items() if method.default]
# the paired differences the report gives, (A, B) for A - B; each ablation against the baselines too: which part of
# the method carries a gain shows there (docs/results.md)
COMPARISONS = (("memcif", "nnunet"), ("memcif", "mean-teacher"), ("memcif", "self-training"),
               ("memcif", "no-mem"), ("memcif", "no-cif"), ("memcif", "memcif-supervised"),
               ("no-cif", "nnunet"), ("no-cif", "mean-teacher"), ("no-cif", "self-training"),
               ("no-mem", "nnunet"), ("no-mem", "mean-teacher"), ("no-mem", "self-training"),
               ("mean-teacher", "nnunet"), ("self-training", "nnunet"), ("memcif-keep-t1ce", "memcif"),
               ("memcif-mask-t1ce", "memcif"))
# the outcome the table is for (docs/results.md): at 1 and 5 % labels the full method ahead of each of these rows by
# at least the margin (mean Dice over the regions), with a paired 95 % interval above 0
TARGET = (("nnunet", 0.03), ("mean-teacher", 0.0), ("self-training", 0.0), ("no-mem", 0.0), ("no-cif", 0.0))
TARGET_FRACTIONS = (0.01, 0.05)
TABLE_OUTPUTS = ("runs", "results.md", "results.csv", "results.png")
REGIONS = (*REGIONS_NNUNET, "mean")  # the evaluated regions (nnunet_mem_cif/brats.py) and their mean
REGION_SHORT = {"whole_tumor": "WT", "tumor_core": "TC", "enhancing_tumor": "ET", "mean": "mean"}
CONFIGURATIONS = ("2d", "3d_fullres")  # one network per run; the cascade's two stages are not a table row
BOOTSTRAP_SAMPLES = 10000
# what a run is trained with (its record keeps them, and SETTING_FILE while it trains): a finished or interrupted
# run is only reused for the same values
SETTING_FILE = "setting.json"
RUN_SETTING_KEYS = ("labeled_fraction", "epochs", "iterations_per_epoch", "seed", "batch_size", "disable_tta",
                    "consistency_weight", "mem_lr_multiplier", "cif_lr_multiplier")


class TableError(PluginUserError, ValueError):
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


def fold_folder(run_dir: str, dataset_name: str, trainer: str, fold: int, configuration: str = "3d_fullres") -> str:
    """Where nnUNetv2_train writes a run's checkpoints, training log and fold validation."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier
    return os.path.join(run_dir, "nnUNet_results", dataset_name,
                        convert_trainer_plans_config_to_identifier(trainer, "nnUNetPlans", configuration),
                        f"fold_{fold}")


def table_runs(methods: Sequence[str], fractions: Sequence[float], seeds: Sequence[int]) -> List[Run]:
    """Every run of the table in the order they are trained: by seed, then fraction, then the table's method order;
    the upper bound once per seed, at fraction 1, after that seed's fractions."""
    ordered = [m for m in METHODS if m in methods]
    runs = []
    for seed in seeds:
        runs += [Run(m, f, seed) for f in fractions for m in ordered if not METHODS[m].all_labels]
        runs += [Run(m, 1.0, seed) for m in ordered if METHODS[m].all_labels]
    return runs


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


def check_dataset(raw_dataset: str, preprocessed_dataset: str, configuration: str = "3d_fullres") -> None:
    """The table needs planned + preprocessed data and a labeled test set; say how to get them."""
    plans = os.path.join(preprocessed_dataset, "nnUNetPlans.json")
    if not os.path.isfile(plans):
        raise TableError(f"{plans} not found: run nnUNetv2_plan_and_preprocess -d ID -c {configuration} first")
    for folder in ("imagesTs", "labelsTs"):
        path = os.path.join(raw_dataset, folder)
        if not os.path.isdir(path) or not any(f.endswith(".nii.gz") for f in os.listdir(path)):
            raise TableError(f"{path} is missing or empty: the table is scored on held-out test cases with "
                             f"labels (nnunet-mem-cif convert-brats2019 writes imagesTs and labelsTs)")


def check_arguments(fractions: Sequence[float], methods: Sequence[str], epochs: int, iterations_per_epoch: int,
                    seeds: Sequence[int], configuration: str = "3d_fullres", batch_size: Optional[int] = None,
                    consistency_weight: Optional[float] = None,
                    lr_multipliers: Optional[Tuple[float, float]] = None) -> None:
    """Arguments no table can come from (NaN fails every range comparison, so it is refused too)."""
    if configuration not in CONFIGURATIONS:
        raise TableError(f"--configuration {configuration}: the table trains {' or '.join(CONFIGURATIONS)}")
    if batch_size is not None and batch_size < 1:
        raise TableError(f"--batch-size must be at least 1, got {batch_size}")
    if consistency_weight is not None and not 0 < consistency_weight < math.inf:
        raise TableError(f"--consistency-weight must be a number > 0, got {consistency_weight}")
    if lr_multipliers is not None and not all(0 < m < math.inf for m in lr_multipliers):
        raise TableError(f"--lr-multipliers MEM:CIF must both be numbers > 0, got "
                         f"{':'.join(map(str, lr_multipliers))}")
    if "self-training" in methods and "nnunet" not in methods:
        raise TableError("--methods: self-training starts from the supervised nnU-Net run of its fraction and seed; "
                         "add nnunet to --methods.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise TableError(f"--methods: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise TableError(f"--fractions: labeled fractions must lie in (0, 1], got {', '.join(map(str, bad))}")
    for flag, values in (("--methods", methods), ("--fractions", fractions), ("--seeds", seeds)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:
            raise TableError(f"{flag}: {', '.join(repeated)} given more than once (a run is one method, "
                             f"fraction and seed); give each once.")
    for flag, value in (("--epochs", epochs), ("--iterations", iterations_per_epoch)):
        if value < 1:
            raise TableError(f"{flag} must be at least 1, got {value}")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad:
        raise TableError(f"--seeds must lie between 0 and 2**32 - 1, got {', '.join(map(str, bad))}")


def parse_lr_multipliers(text: str) -> Tuple[float, float]:
    """``"MEM:CIF"`` or one number for both -> (mem_lr_multiplier, cif_lr_multiplier), both > 0 (an argparse
    type: the table's --lr-multipliers and the experiments' --multipliers)."""
    import argparse
    try:
        values = tuple(float(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"expected MEM:CIF or one number, both > 0, got {text!r}")
    return values


def parse_fold(fold) -> int:
    """``--fold`` as an int; fold 'all' is refused: nnU-Net validates it on its own training cases, so the cases
    whose labels a run hides would be validation cases too."""
    if str(fold) == "all":
        raise TableError("--fold all is not supported: nnU-Net's fold 'all' validates on its training cases, "
                         "so the table run's unlabeled cases would be validation cases too. Give a fold number.")
    try:
        return int(fold)
    except ValueError:
        raise TableError(f"--fold must be a fold number (0, 1, ...), got {fold!r}") from None


def fold_training_cases(preprocessed_dataset: str, fold: int, configuration: str = "3d_fullres") -> List[str]:
    """The training cases of ``fold``, as nnU-Net's do_split will pick them, or a TableError for a fold the
    dataset cannot have (where nnU-Net would silently train on a random 80:20 split instead)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = PlansManager(os.path.join(preprocessed_dataset, "nnUNetPlans.json"))
    if configuration not in plans.available_configurations:
        raise TableError(f"{preprocessed_dataset}/nnUNetPlans.json has no {configuration} configuration: run "
                         f"nnUNetv2_plan_and_preprocess -d ID -c {configuration}")
    splits_file = os.path.join(preprocessed_dataset, "splits_final.json")
    if os.path.isfile(splits_file):
        splits = load_json(splits_file)
        if not 0 <= fold < len(splits):
            raise TableError(f"--fold {fold}: {splits_file} defines folds 0..{len(splits) - 1}. Choose one of "
                             f"them.")
        return list(splits[fold]["train"])
    folder = os.path.join(preprocessed_dataset, plans.get_configuration(configuration).data_identifier)
    identifiers = sorted(infer_dataset_class(folder).get_identifiers(folder)) if os.path.isdir(folder) else []
    if not identifiers:
        raise TableError(f"{folder} holds no preprocessed cases: run nnUNetv2_plan_and_preprocess -d ID -c "
                         f"{configuration}")
    if len(identifiers) < 5:
        raise TableError(f"{len(identifiers)} training cases are too few for nnU-Net's 5-fold split (at least "
                         f"5): add cases, or write your own {splits_file}.")
    if not 0 <= fold < 5:
        raise TableError(f"--fold {fold}: nnU-Net's 5-fold split has folds 0..4 (or write your own "
                         f"{splits_file}).")
    return list(generate_crossval_split(identifiers, seed=12345, n_splits=5)[fold]["train"])


def check_fractions_leave_unlabeled_cases(training_cases: Sequence[str], fractions: Sequence[float],
                                          methods: Sequence[str], seeds: Sequence[int], fold: int) -> None:
    """A semi-supervised run needs at least one training case whose labels are hidden."""
    from nnunet_mem_cif.splits import split_labeled_fraction
    semi_supervised = [m for m in methods if METHODS[m].unlabeled or METHODS[m].pseudo_labels]
    for fraction in fractions:
        for seed in seeds:
            if semi_supervised and not split_labeled_fraction(training_cases, fraction, seed)[1]:
                raise TableError(f"--fractions {fraction:g} keeps all {len(training_cases)} training cases of "
                                 f"fold {fold} labeled, so {', '.join(semi_supervised)} would have no unlabeled "
                                 f"case. Use a smaller fraction, or only supervised methods at this one.")


def is_table_output(folder: str) -> bool:
    """Whether ``folder`` holds only what this command writes (runs/, results.*, temporaries of those)."""
    return all(name in TABLE_OUTPUTS or name.startswith(".partial-") for name in os.listdir(folder))


def check_output_dir(output_dir: str, protected: Sequence[str]) -> None:
    """The output may be new, empty or an earlier table output (finished runs are kept, interrupted ones
    resumed); never a dataset folder of nnU-Net's, nor a folder that holds anything else."""
    for folder in protected:
        if is_within(output_dir, folder) or is_within(folder, output_dir):
            raise TableError(f"--output-dir {output_dir} and the dataset folder {folder} overlap; the dataset "
                             f"is only read. Choose an output folder outside it.")
    if os.path.lexists(output_dir) and (os.path.islink(output_dir) or not os.path.isdir(output_dir)):
        raise TableError(f"--output-dir {output_dir} exists and is not a folder. Choose another.")
    if os.path.isdir(output_dir) and not is_table_output(output_dir):
        raise TableError(f"--output-dir {output_dir} holds files this command did not write, so it does not "
                         f"write into it. Choose a new or empty folder, or an earlier table output.")


def check_no_test_case_in_training(raw_dataset: str, file_ending: str, reader_class: type) -> None:
    """No imagesTs case may be an imagesTr case, by name or by content (nnunet_mem_cif.leakage).

    Done once per command, before any run, rather than at every run's training start: decoding every image of a
    BraTS-size dataset takes minutes. The trainers then check the unlabeled pool by name only.
    """
    from nnunet_mem_cif.leakage import TEST_FOLDER, TRAINING_FOLDER, case_files, check_content_disjoint, \
        check_names_disjoint, fingerprint_files, relative_names
    training, test = (case_files(os.path.join(raw_dataset, f), file_ending) for f in (TRAINING_FOLDER, TEST_FOLDER))
    advice = "Keep each case in imagesTr or in imagesTs, not both (then plan and preprocess again)."
    check_names_disjoint(TRAINING_FOLDER, training, {TEST_FOLDER: test}, raw_dataset, advice, TableError)
    names = relative_names(raw_dataset, training) + relative_names(raw_dataset, test)
    processes = 1 if len(names) < 64 else min(8, os.cpu_count() or 1)
    fingerprints = fingerprint_files(raw_dataset, names, reader_class, processes, error=TableError)
    check_content_disjoint(raw_dataset, fingerprints, [(TRAINING_FOLDER, TEST_FOLDER)], {TRAINING_FOLDER: advice},
                           TableError)


def run_table(dataset_id: int, output_dir: str, fractions: Sequence[float], methods: Sequence[str],
              epochs: int, iterations_per_epoch: int, seeds: Sequence[int], device: str, fold=0,
              command: Optional[str] = None, configuration: str = "3d_fullres",
              batch_size: Optional[int] = None, disable_tta: bool = False,
              consistency_weight: Optional[float] = None,
              lr_multipliers: Optional[Tuple[float, float]] = None) -> List[dict]:
    """Train, predict and evaluate every missing (seed, fraction, method), then write the table.

    Everything is checked before the output folder is created: the arguments, the dataset (plans, preprocessed
    cases, a labeled test set), the fold (as nnU-Net will split), that every fraction leaves the semi-supervised
    methods unlabeled cases, that no test case is a training case, and the output folder.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    check_arguments(fractions, methods, epochs, iterations_per_epoch, seeds, configuration, batch_size,
                    consistency_weight, lr_multipliers)
    fold = parse_fold(fold)
    from nnunet_mem_cif.nnunet_commands import nnunet_folder
    raw_root, preprocessed_root = (nnunet_folder(v, TableError) for v in ("nnUNet_raw", "nnUNet_preprocessed"))
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net's message says where it looked
        raise TableError(f"--dataset-id {dataset_id}: {e}") from e
    raw_dataset = os.path.join(raw_root, dataset_name)
    preprocessed_dataset = os.path.join(preprocessed_root, dataset_name)
    check_dataset(raw_dataset, preprocessed_dataset, configuration)
    training_cases = fold_training_cases(preprocessed_dataset, fold, configuration)
    check_fractions_leave_unlabeled_cases(training_cases, fractions, methods, seeds, fold)
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, [raw_dataset, preprocessed_dataset])
    plans = PlansManager(os.path.join(preprocessed_dataset, "nnUNetPlans.json"))
    check_no_test_case_in_training(raw_dataset, load_json(os.path.join(preprocessed_dataset, "dataset.json"))
                                   ["file_ending"], plans.image_reader_writer_class)
    os.makedirs(output_dir, exist_ok=True)
    table = TableSetting(dataset_id, dataset_name, raw_dataset, preprocessed_dataset, output_dir, configuration,
                         fold, epochs, iterations_per_epoch, batch_size, disable_tta, consistency_weight,
                         lr_multipliers, device, command)
    runs = table_runs(methods, fractions, seeds)
    for run in runs:
        check_same_setting(run.folder(output_dir), run_setting(run, table))
    records = []
    for index, run in enumerate(runs, 1):
        records.append(run_one(run, f"[{index}/{len(runs)}]", table))
        write_report(output_dir)
    return records


@dataclass(frozen=True)
class TableSetting:
    """What every run of one table shares."""
    dataset_id: int
    dataset_name: str
    raw_dataset: str
    preprocessed_dataset: str
    output_dir: str
    configuration: str
    fold: int
    epochs: int
    iterations_per_epoch: int
    batch_size: Optional[int]
    disable_tta: bool  # no mirroring at validation, pseudo-labelling and test prediction, for every row alike
    consistency_weight: Optional[float]  # the semi-supervised rows'; None: the trainers' default
    lr_multipliers: Optional[Tuple[float, float]]  # MEM, CIF of the MEM + CIF rows; None: the trainers' default
    device: str
    command: Optional[str]

    def environment(self, run_dir: str) -> Dict[str, str]:
        from nnunet_mem_cif.nnunet_commands import nnunet_command_environment
        return nnunet_command_environment(self.device, raw=os.path.dirname(self.raw_dataset),
                                          preprocessed=os.path.dirname(self.preprocessed_dataset),
                                          results=os.path.join(run_dir, "nnUNet_results"))

    def predict(self, title: str, trainer: str, images: str, predictions: str, run_dir: str, log: str) -> float:
        """``nnUNetv2_predict`` of a run's model on a folder of images; returns its wall time."""
        from nnunet_mem_cif.discovery import console_script
        from nnunet_mem_cif.nnunet_commands import run_step
        shutil.rmtree(predictions, ignore_errors=True)  # a prediction interrupted before is redone whole
        start = time.time()
        command = [console_script("nnUNetv2_predict"), "-i", images, "-o", predictions, "-d", str(self.dataset_id),
                   "-c", self.configuration, "-tr", trainer, "-f", str(self.fold), "-device", self.device, "-npp", "1",
                   "-nps", "1"]
        run_step(title, command + (["--disable_tta"] if self.disable_tta else []), self.environment(run_dir), log)
        return time.time() - start


def run_setting(run: Run, table: TableSetting) -> dict:
    """What the run's trainer is told (``NNUNET_MEM_CIF_TABLE_RUN``), less self-training's pseudo-labeled folder."""
    method = METHODS[run.method]
    setting = {"labeled_fraction": run.fraction, "epochs": table.epochs,
               "iterations_per_epoch": table.iterations_per_epoch, "seed": run.seed}
    if table.batch_size is not None:
        setting["batch_size"] = table.batch_size
    if table.disable_tta:
        setting["disable_tta"] = True
    if method.unlabeled and table.consistency_weight is not None:
        setting["consistency_weight"] = table.consistency_weight
    if method.fusion and table.lr_multipliers is not None:
        setting["mem_lr_multiplier"], setting["cif_lr_multiplier"] = table.lr_multipliers
    return setting


def method_options(setting: dict) -> List[str]:
    """The ``nnunet-mem-cif table`` options that give a run ``setting`` (its run.json) again: ``run_setting``'s
    method keys back to the command line, defined beside it so that the two change together. A setting chosen on
    validation cases (experiments/choose_on_validation.py) is trained with these options. None: the defaults."""
    options = []
    if "consistency_weight" in setting:
        options += ["--consistency-weight", f"{setting['consistency_weight']:g}"]
    if "mem_lr_multiplier" in setting:
        options += ["--lr-multipliers", f"{setting['mem_lr_multiplier']:g}:{setting['cif_lr_multiplier']:g}"]
    return options


def check_same_setting(run_dir: str, setting: dict) -> None:
    """A finished run (run.json) is reused, and an interrupted one (setting.json) resumed, only where this command
    would train it alike: a table must not mix settings. Checked for every run before the first one trains."""
    for name in ("run.json", SETTING_FILE):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            with open(path) as f:
                recorded = json.load(f)
            differing = [f"{k} {recorded.get(k)} (now {setting.get(k)})" for k in RUN_SETTING_KEYS
                         if recorded.get(k) != setting.get(k)]
            if differing:
                raise TableError(f"{run_dir} was trained with another setting: {', '.join(differing)}. Give this "
                                 f"setting its own --output-dir, or the earlier command's options.")
            return


def run_one(run: Run, step: str, table: TableSetting) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

    from nnunet_mem_cif.evaluation import evaluate_folders, write_results

    run_dir = run.folder(table.output_dir)
    record_file = os.path.join(run_dir, "run.json")
    method = METHODS[run.method]
    title = f"{step} {method.row}, {run.fraction:.0%} labeled, seed {run.seed}"
    setting = run_setting(run, table)
    if os.path.isfile(record_file):
        print(f"{title}: done before, skipped")
        return load_json(record_file)
    os.makedirs(run_dir, exist_ok=True)
    write_atomically(os.path.join(run_dir, SETTING_FILE), lambda partial: save_json(setting, partial))
    stages, first_training_here = {}, False
    if method.pseudo_labels:
        setting["pseudo_labeled_folder"], stages, first_training_here = pseudo_label(run, title, table)
    fold_dir = fold_folder(run_dir, table.dataset_name, method.trainer, table.fold, table.configuration)
    train_seconds, seconds_before = train(f"{title}: nnUNetv2_train", method.trainer, setting, run_dir, table)

    predictions = os.path.join(run_dir, "predictions")
    predict_seconds = table.predict(f"{title}: nnUNetv2_predict", method.trainer,
                                    os.path.join(table.raw_dataset, "imagesTs"), predictions, run_dir,
                                    os.path.join(run_dir, "predict.log"))
    metrics = evaluate_folders(predictions, os.path.join(table.raw_dataset, "labelsTs"))
    write_results(metrics, os.path.join(run_dir, "metrics.json"))
    subset = load_json(os.path.join(fold_dir, "labeled_subset.json"))
    validation = load_json(os.path.join(fold_dir, "validation", "summary.json"))  # nnU-Net's, on the fold's cases
    record = {"method": run.method, "row": method.row, "trainer": method.trainer, "dataset": table.dataset_name,
              "fold": table.fold, "configuration": table.configuration,
              **{k: v for k, v in setting.items() if k != "pseudo_labeled_folder"},
              "labeled_cases": subset["labeled"], "unlabeled_pool": len(subset["unlabeled"]),
              "test_cases": sorted(metrics["cases"]), "mean": metrics["mean"],
              # what settings are chosen on (never the test cases): mean Dice over the regions, fold validation
              "validation_dice": validation["foreground_mean"]["Dice"],
              "validation_cases": len(validation["metric_per_case"]),
              # per case too: a choice can then be made again from the committed records, without the run's folder
              "validation_case_dice": validation_case_dice(validation),
              # self-training: both trainings and the pseudo-labelling between them
              "train_seconds": round(train_seconds + sum(stages.values()), 1),
              **({"resumed_after_seconds": round(seconds_before, 1)} if seconds_before else {}),
              **({"stage_seconds": {**stages, "second_training": round(train_seconds, 1)}} if stages else {}),
              **({"first_model": "trained in this run: the supervised row's model was not on this machine"}
                 if first_training_here else {}),
              "predict_seconds": round(predict_seconds, 1), "device": device_description(table.device),
              "versions": versions(), "command": table.command}
    write_atomically(record_file, lambda partial: save_json(record, partial, sort_keys=False))
    return record


def train(title: str, trainer: str, setting: dict, run_dir: str, table: TableSetting) -> Tuple[float, float]:
    """``nnUNetv2_train`` of one run's model in ``run_dir`` (resumed with ``--c`` from its last checkpoint, if any).
    Returns its training seconds, the ones before a resume included, and those before the resume alone."""
    from nnunet_mem_cif.discovery import console_script
    from nnunet_mem_cif.nnunet_commands import run_step
    from nnunet_mem_cif.trainers.table_runs import TABLE_RUN_VARIABLE

    os.makedirs(run_dir, exist_ok=True)
    env = table.environment(run_dir)
    env[TABLE_RUN_VARIABLE] = json.dumps(setting)
    fold_dir = fold_folder(run_dir, table.dataset_name, trainer, table.fold, table.configuration)
    resume = any(os.path.isfile(os.path.join(fold_dir, f"checkpoint_{k}.pth")) for k in ("latest", "final"))
    epochs_before, seconds_before = trained_before_resume(fold_dir) if resume else (0, 0.0)
    start = time.time()
    run_step(f"{title}{' (resumed)' if resume else ''}",
             [console_script("nnUNetv2_train"), str(table.dataset_id), table.configuration, str(table.fold), "-tr",
              trainer, "-device", table.device] + (["--c"] if resume else []), env,
             os.path.join(run_dir, "train.log"), progress_pattern=r"Epoch time:", total=table.epochs,
             done=epochs_before)
    return time.time() - start + seconds_before, seconds_before


def trained_before_resume(fold_dir: str) -> Tuple[int, float]:
    """The epochs and training seconds before an interruption: the epochs logged in the checkpoint
    ``nnUNetv2_train --c`` resumes from (nnU-Net's order: final, then latest), each epoch's end minus its start. A
    resumed run's train_seconds adds them to its own; the epochs after that checkpoint were lost and are trained
    (and counted) again."""
    from nnunet_mem_cif.checkpoints import read_checkpoint

    path = next(p for p in (os.path.join(fold_dir, f"checkpoint_{k}.pth") for k in ("final", "latest"))
                if os.path.isfile(p))
    logging = read_checkpoint(path, "cpu")["logging"]
    ends = logging["epoch_end_timestamps"]
    return len(ends), float(sum(end - begin for begin, end in zip(logging["epoch_start_timestamps"], ends)))


def supervised_model(run: Run, title: str, table: TableSetting) -> Tuple[str, float, bool]:
    """The run folder holding self-training's first model: the supervised row's run (same labeled cases, seed and
    schedule), or, where that run's model is not on this machine (its run.json and metrics.json were restored from
    a commit, experiments/evidence_table.sh), the same training in the self-training run's ``first_training``
    folder. Returns the folder, that training's seconds, and whether it was trained here."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    supervised = Run("nnunet", run.fraction, run.seed)
    supervised_dir = supervised.folder(table.output_dir)
    trainer = METHODS["nnunet"].trainer
    model = os.path.join(fold_folder(supervised_dir, table.dataset_name, trainer, table.fold, table.configuration),
                         "checkpoint_final.pth")
    if os.path.isfile(model):
        return supervised_dir, load_json(os.path.join(supervised_dir, "run.json"))["train_seconds"], False
    first_dir = os.path.join(run.folder(table.output_dir), "first_training")
    seconds_file = os.path.join(first_dir, "train_seconds.json")
    if not os.path.isfile(seconds_file):
        seconds, _ = train(f"{title}: nnUNetv2_train, the first model (the supervised run's is not here)", trainer,
                           run_setting(supervised, table), first_dir, table)
        write_text_atomically(seconds_file, lambda f: json.dump(round(seconds, 1), f))
    with open(seconds_file) as f:
        return first_dir, json.load(f), True


def pseudo_label(run: Run, title: str, table: TableSetting) -> Tuple[str, Dict[str, float], bool]:
    """Self-training's first stages: the supervised model (``supervised_model``) predicts the hidden-label cases
    (``nnUNetv2_predict`` on their raw images), and those predictions are preprocessed with the plans' preprocessor
    as if they were the cases' labels. Returns the preprocessed folder (the other cases linked from nnU-Net's), each
    stage's time, and whether the first model was trained in this run."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mem_cif.atomic import atomic_folder
    from nnunet_mem_cif.leakage import TRAINING_FOLDER, case_files

    supervised_dir, first_seconds, trained_here = supervised_model(run, title, table)
    subset = load_json(os.path.join(fold_folder(supervised_dir, table.dataset_name, METHODS["nnunet"].trainer,
                                                table.fold, table.configuration), "labeled_subset.json"))
    hidden = subset["unlabeled"]
    run_dir = run.folder(table.output_dir)
    dataset_json = load_json(os.path.join(table.preprocessed_dataset, "dataset.json"))
    file_ending = dataset_json["file_ending"]
    plans = PlansManager(os.path.join(table.preprocessed_dataset, "nnUNetPlans.json"))
    configuration = plans.get_configuration(table.configuration)
    target = os.path.join(run_dir, "pseudo_labeled", configuration.data_identifier)
    stages = {"first_training": first_seconds}
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isdir(target):
        return target, {**stages, **load_json(os.path.join(run_dir, "pseudo_label_seconds.json"))}, trained_here

    images = os.path.join(run_dir, "pseudo_label_input")  # links to the hidden-label cases' images only
    shutil.rmtree(images, ignore_errors=True)
    os.makedirs(images)
    training_images = case_files(os.path.join(table.raw_dataset, TRAINING_FOLDER), file_ending)
    image_files = [training_images[case] for case in hidden]
    for files in image_files:
        for path in files:
            os.symlink(path, os.path.join(images, os.path.basename(path)))
    labels = os.path.join(run_dir, "pseudo_labels")
    predict_seconds = table.predict(f"{title}: nnUNetv2_predict on the {len(hidden)} hidden-label cases",
                                    METHODS["nnunet"].trainer, images, labels, supervised_dir,
                                    os.path.join(run_dir, "pseudo_label.log"))

    start = time.time()
    source = os.path.join(table.preprocessed_dataset, configuration.data_identifier)
    preprocessor = configuration.preprocessor_class(verbose=False)
    print(f"{title}: preprocessing {len(hidden)} pseudo-labels with {type(preprocessor).__name__}")
    with atomic_folder(target) as partial:
        hidden_set = set(hidden)
        for name in os.listdir(source):  # nnU-Net's files of every other case, linked
            case = name.split(".")[0].removesuffix("_seg")
            if case not in hidden_set:
                os.symlink(os.path.join(source, name), os.path.join(partial, name))
        for case, files in zip(hidden, image_files):
            preprocessor.run_case_save(os.path.join(partial, case), files,
                                       os.path.join(labels, case + file_ending), plans, configuration, dataset_json)
        stages.update(pseudo_label_prediction=round(predict_seconds, 1),
                      pseudo_label_preprocessing=round(time.time() - start, 1))
        # written before the folder appears: a resumed run that finds the folder finds these times too
        write_text_atomically(os.path.join(run_dir, "pseudo_label_seconds.json"),
                              lambda f: json.dump({k: v for k, v in stages.items() if k != "first_training"}, f))
    return target, stages, trained_here


def validation_case_dice(summary: dict) -> Dict[str, float]:
    """Per fold validation case the mean Dice over nnU-Net's evaluated regions, from nnU-Net's validation
    summary.json: what a setting is chosen on (experiments/choose_on_validation.py)."""
    return {os.path.basename(c["reference_file"]): statistics.mean(m["Dice"] for m in c["metrics"].values())
            for c in summary["metric_per_case"]}


# ---------------------------------------------------------------------------------------------- the table
def case_dice(run_dir: str) -> Dict[str, Dict[str, float]]:
    """Per test case the Dice of each region and their mean, from the run's ``metrics.json`` ({} without one)."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        cases = json.load(f)["cases"]
    regions = [r for r in REGIONS if r != "mean"]
    return {case: {**{r: values[r]["dice"] for r in regions},
                   "mean": statistics.mean(values[r]["dice"] for r in regions)} for case, values in cases.items()}


def load_records(output_dir: str) -> List[dict]:
    """Every finished run's record, in the table's order, with its per-case Dice under ``case_dice``."""
    records = []
    runs_dir = os.path.join(output_dir, "runs")
    for root, _, files in os.walk(runs_dir):
        if "run.json" in files:
            with open(os.path.join(root, "run.json")) as f:
                record = json.load(f)
            records.append({**record, "case_dice": case_dice(root)})
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


def paired_runs(records: List[dict], a: str, b: str, fraction: float) -> Dict[int, Dict[str, dict]]:
    """Per seed, A's and B's per-case metrics (method -> case -> region -> Dice) at ``fraction``, for the seeds in
    which both ran with per-case metrics: what a paired difference pairs, defined once."""
    by_seed = {}
    for r in records:
        if r["labeled_fraction"] == fraction and r["method"] in (a, b) and r.get("case_dice"):
            by_seed.setdefault(r["seed"], {})[r["method"]] = r["case_dice"]
    return {seed: runs for seed, runs in by_seed.items() if len(runs) == 2}


def paired_difference(records: List[dict], a: str, b: str, fraction: float, region: str = "mean",
                      samples: int = BOOTSTRAP_SAMPLES) -> Optional[Tuple[float, float, float, int]]:
    """Mean Dice difference A - B over (seed, test case) pairs, with a 95 % percentile bootstrap interval that
    resamples those pairs; None where no seed has both runs with per-case metrics."""
    import numpy as np
    differences = [runs[a][case][region] - runs[b][case][region]
                   for runs in paired_runs(records, a, b, fraction).values()
                   for case in sorted(set(runs[a]) & set(runs[b]))]
    if not differences:
        return None
    values = np.asarray(differences)
    draws = np.random.default_rng(0).integers(0, len(values), (samples, len(values)))
    low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    return float(values.mean()), float(low), float(high), len(values)


def interval_text(difference: Tuple[float, ...]) -> str:
    """``+0.012 [+0.003, +0.021]``: a paired difference's mean and 95 % interval, as every report writes one."""
    mean, low, high = difference[:3]
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def supervised_scores(records: List[dict], on: str = "test") -> Dict[float, List[float]]:
    """Supervised nnU-Net's mean Dice over the regions per labeled fraction (all labels at 1.0), one value per seed;
    ``on`` "validation" reads nnU-Net's fold validation Dice (what a choice is made on), "test" the held-out test
    cases (what the table reports)."""
    def score(r: dict) -> Optional[float]:
        return r["mean"]["mean"]["dice"] if on == "test" else r.get("validation_dice")
    values: Dict[float, List[float]] = {}
    for r in records:
        if r["method"] in ("nnunet", "nnunet-all") and score(r) is not None:
            values.setdefault(r["labeled_fraction"], []).append(score(r))
    return values


def convergence_steps(records: List[dict], on: str = "test") -> List[tuple]:
    """Supervised nnU-Net must improve with every step in labels (fractions, then all labels) by more than twice
    the larger of the two steps' seed-to-seed standard deviations; otherwise the schedule has not converged far
    enough for labels, and so for unlabeled data, to matter. ``on`` "validation" checks nnU-Net's fold validation
    Dice (what a schedule is chosen on), "test" the held-out test cases (what the table reports). Returns
    (fraction before, after, mean before, mean after, step, 2 x std, met) per step."""
    values = supervised_scores(records, on)
    fractions = sorted(values)
    spread = {f: statistics.stdev(v) if len(v) > 1 else float("nan") for f, v in values.items()}
    steps = []
    for low, high in zip(fractions, fractions[1:]):
        before, after = statistics.mean(values[low]), statistics.mean(values[high])
        threshold = 2 * max(spread[low], spread[high])
        steps.append((low, high, before, after, after - before, threshold, after - before > threshold))
    return steps  # a NaN threshold (one seed) is never met: one seed cannot show it


def convergence_met(records: List[dict], on: str = "validation") -> bool:
    steps = convergence_steps(records, on)
    return bool(steps) and all(step[-1] for step in steps)


def convergence_check(records: List[dict], on: str = "test") -> List[str]:
    """The convergence check as a section of results.md (nothing where fewer than two label amounts ran)."""
    steps = convergence_steps(records, on)
    if not steps:
        return []
    cases = "the held-out test cases" if on == "test" else "nnU-Net's fold validation cases"
    lines = ["", f"## Convergence check on {cases}: supervised nnU-Net's mean Dice must rise with the labels", "",
             "| step | mean Dice before -> after | step | 2 x seed std | met |", "|---|---|---|---|---|"]
    for low, high, before, after, step, threshold, met in steps:
        lines.append(f"| {low:.0%} -> {high:.0%} | {before:.3f} -> {after:.3f} | {step:+.3f} | "
                     f"{'n/a (one seed)' if math.isnan(threshold) else f'{threshold:.3f}'} | "
                     f"{'yes' if met else 'no'} |")
    met_all = all(step[-1] for step in steps)
    lines += ["", f"**{'Met' if met_all else 'Not met'}**: " + (
        "every step is larger than twice its seed spread." if met_all else
        "some step in labels is within the seed spread, so this schedule cannot show what labels, or unlabeled "
        "data, add.")]
    return lines


def headroom(records: List[dict], fraction: float, on: str = "validation") -> Optional[float]:
    """How far supervised nnU-Net at ``fraction`` lies below nnU-Net on all labels (means over seeds). The target's
    margin over supervised nnU-Net (``TARGET``) fits only where this is at least that margin: otherwise a row trained
    with a fraction of the labels would have to beat nnU-Net trained on every label. None where either is missing."""
    means = step_to_all_labels(supervised_scores(records, on), fraction)
    return None if means is None else means[1] - means[0]


def step_to_all_labels(values: Dict[float, List[float]], fraction: float) -> Optional[Tuple[float, float]]:
    """Supervised nnU-Net's mean over seeds at ``fraction`` and on all labels, from ``supervised_scores``' values;
    None where either is missing."""
    if fraction not in values or 1.0 not in values:
        return None
    return statistics.mean(values[fraction]), statistics.mean(values[1.0])


def leaves_room(step: float) -> bool:
    """Whether a step from supervised nnU-Net to all labels leaves room for the target's margin (``TARGET``): the one
    rule both the schedule45 phase's gate and the report's "room" column apply."""
    return step >= dict(TARGET)["nnunet"]


def headroom_met(records: List[dict], fraction: float, on: str = "validation") -> bool:
    room = headroom(records, fraction, on)
    return room is not None and leaves_room(room)


def headroom_report(records: List[dict]) -> List[str]:
    """The headroom at each target fraction as a section of results.md: where it is below the margin, no row can
    meet the target there, whatever it is trained with."""
    margin = dict(TARGET)["nnunet"]
    scores = {on: supervised_scores(records, on) for on in ("validation", "test")}
    rows = []
    for fraction in TARGET_FRACTIONS:
        means = [step_to_all_labels(values, fraction) for values in scores.values()]
        if None in means:
            continue
        cells = [f"{before:.3f} -> {after:.3f} | {after - before:+.3f} | "
                 f"{'yes' if leaves_room(after - before) else 'no'}" for before, after in means]
        rows.append(f"| {fraction:.0%} | {len(scores['test'][fraction])} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", f"## Headroom: supervised nnU-Net's distance to all labels against the target's {margin:+.3f}", "",
            "Supervised nnU-Net -> nnU-Net on all labels, mean Dice over WT / TC / ET (means over seeds); where the "
            "step is below the margin, a row must beat nnU-Net trained on every label to meet the target.", "",
            "| labeled | seeds | validation | headroom | room | test | headroom | room |",
            "|---|---|---|---|---|---|---|---|"] + rows


def paired_report(records: List[dict]) -> List[str]:
    fractions = sorted({r["labeled_fraction"] for r in records})
    rows = []
    for a, b in COMPARISONS:
        for fraction in fractions:
            mean = paired_difference(records, a, b, fraction)
            if mean is None:
                continue
            et = paired_difference(records, a, b, fraction, "enhancing_tumor")
            cells = [interval_text(d) for d in (mean, et)]
            rows.append(f"| {fraction:.0%} | {METHODS[a].row} - {METHODS[b].row} | {mean[3]} | {cells[0]} | "
                        f"{cells[1]} |")
    if not rows:
        return []
    return ["", "## Paired differences (Dice, A - B)", "",
            f"Over (seed, test case) pairs: the mean difference and its 95 % bootstrap interval ({BOOTSTRAP_SAMPLES} "
            f"resamples of the pairs). An interval that excludes 0 is a difference these runs can show.", "",
            "| labeled | A - B | pairs | mean over WT/TC/ET | ET |", "|---|---|---|---|---|"] + rows


def shared_seeds(records: List[dict], a: str, b: str, fraction: float) -> Set[int]:
    """The seeds ``paired_difference`` pairs over: both A and B ran at ``fraction`` with per-case metrics."""
    return set(paired_runs(records, a, b, fraction))


def target_criterion(other: str, margin: float) -> str:
    """How every report names one criterion of ``TARGET``: ``>= +0.030 supervised nnU-Net``, ``ahead of X``."""
    return f"{'>= ' + format(margin, '+.3f') if margin else 'ahead of'} {METHODS[other].row}"


def target_met(difference: Tuple[float, ...], margin: float) -> bool:
    """One criterion of ``TARGET``, from the full method's paired difference to its row (mean, 95 % interval): met
    where the mean reaches the margin and the interval lies above 0."""
    mean, low = difference[:2]
    return mean >= margin and low > 0


def target_report(records: List[dict]) -> List[str]:
    """The outcome the evidence table is for (docs/results.md), judged from the paired differences alone: at each of
    ``TARGET_FRACTIONS`` the full method must be ahead of every row in ``TARGET`` by at least its margin (supervised
    nnU-Net: 3 Dice points) with a 95 % interval above 0. A criterion without runs stays open; a verdict from fewer
    than 3 seeds is marked provisional."""
    fractions = [f for f in TARGET_FRACTIONS if any(r["labeled_fraction"] == f and r["method"] == "memcif"
                                                    for r in records)]
    if not fractions:
        return []
    rows, verdicts, provisional = [], [], False
    for fraction in fractions:
        for other, margin in TARGET:
            seeds = shared_seeds(records, "memcif", other, fraction)
            difference = paired_difference(records, "memcif", other, fraction)
            criterion = target_criterion(other, margin)
            if difference is None:
                rows.append(f"| {fraction:.0%} | {criterion} | not run yet | 0 | open |")
                verdicts.append(None)
                continue
            met = target_met(difference, margin)
            verdicts.append(met)
            provisional |= len(seeds) < 3
            rows.append(f"| {fraction:.0%} | {criterion} | {interval_text(difference)} | {len(seeds)} | "
                        f"{'yes' if met else 'no'}{'' if len(seeds) >= 3 else ' (provisional)'} |")
    decided = [v for v in verdicts if v is not None]
    open_count = verdicts.count(None)
    if decided and not all(decided):
        verdict = "**Not met**" + ("" if not open_count else
                                   f" so far ({open_count} {'criterion' if open_count == 1 else 'criteria'} open)")
    elif open_count:
        verdict = f"**Open**: {open_count} of {len(verdicts)} criteria have no runs yet"
    else:
        verdict = "**Met**"
    if provisional and (not open_count or not all(decided)):
        verdict += ", provisional (fewer than 3 seeds)"
    return ["", "## Target: the full method ahead at " + " and ".join(f"{f:.0%}" for f in fractions), "",
            "Full method - B over (seed, test case) pairs, mean Dice over WT / TC / ET; met where the mean reaches "
            "the margin and the 95 % interval lies above 0. The interval resamples the test cases of the runs as "
            "trained: it leaves out training noise (the same run trained again scores differently), which "
            "experiments/training_noise.py measures and counts.", "",
            "| labeled | full method ... | full method - B [95 % CI] | seeds | met |", "|---|---|---|---|---|"] + rows \
        + ["", verdict + "."]


def markdown_report(records: List[dict]) -> str:
    """Methods x fractions, Dice and Sensitivity per region and their mean (mean ± std over seeds), the convergence
    check, the headroom, the target and the paired differences."""
    if not records:
        return "no finished runs yet\n"
    first = records[0]
    seeds = sorted({r["seed"] for r in records})
    schedules = sorted({(r["epochs"], r["iterations_per_epoch"], r.get("batch_size"), r.get("disable_tta", False))
                        for r in records}, key=str)
    lines = [f"# {first['dataset']}: {len(first['test_cases'])} held-out test cases, fold {first['fold']}, "
             f"{first['configuration']}",
             "",
             f"- seeds: {', '.join(map(str, seeds))} (a seed fixes the labeled cases, the same for every method, "
             f"and the initialisation); values are the mean over test cases, then mean ± std over seeds",
             "- schedule: " + "; ".join(f"{e} epochs x {i} iterations"
                                        + (f", batch size {b}" if b else ", the plans' batch size")
                                        + (", no test-time mirroring" if tta_off else "")
                                        for e, i, b, tta_off in schedules),
             f"- device: {first['device']}; versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items()),
             _commands_line(records),
             "",
             "| labeled | method | labeled cases | seeds | "
             + " | ".join(f"Dice {REGION_SHORT[r]}" for r in REGIONS) + " | "
             + " | ".join(f"Sens {REGION_SHORT[r]}" for r in REGIONS) + " | train [min] |",
             "|---|---|---|---|" + "---|" * (2 * len(REGIONS) + 1)]
    groups: Dict[tuple, List[dict]] = {}
    for record in records:
        groups.setdefault((record["labeled_fraction"], record["method"]), []).append(record)
    for (fraction, method), group in groups.items():
        cells = [_mean_std([r["mean"][region][metric] for r in group])
                 for metric in ("dice", "sensitivity") for region in REGIONS]
        labeled = "/".join(sorted({str(len(r["labeled_cases"])) for r in group}))
        # Each row names its seeds: while a seed is incomplete, rows average over different numbers of them.
        row_seeds = ", ".join(str(r["seed"]) for r in group)
        minutes = statistics.mean(r["train_seconds"] for r in group) / 60
        lines.append(f"| {fraction:.0%} | {group[0]['row']} | {labeled} | {row_seeds} | " + " | ".join(cells)
                     + f" | {minutes:.1f} |")
    lines += (convergence_check(records, "validation") + convergence_check(records, "test") + headroom_report(records)
              + target_report(records) + paired_report(records))
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
    """Grouped bars: one panel per metric and region, labeled fractions on x, one bar per method, mean and std over
    seeds."""
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
                cells = [[r["mean"][region][metric] for r in records
                          if r["method"] == method and r["labeled_fraction"] == f] for f in fractions]
                means = [np.mean(c) if c else np.nan for c in cells]
                stds = [np.std(c, ddof=1) if len(c) > 1 else 0.0 for c in cells]  # over seeds
                ax.bar(np.arange(len(fractions)) + (i - (len(methods) - 1) / 2) * width, means, width,
                       yerr=stds, capsize=2, label=METHODS[method].row)
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
