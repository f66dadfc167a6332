"""What MEM, CIF and the semi-supervised step cost, side by side with nnU-Net's own trainer on one planned dataset.

Everything is measured in one run, on the same machine, plans, patch size and batch size, and printed as a markdown
table of ratios against nnU-Net (``nnUNetTrainer`` / PlainConvUNet) with the targets listed in docs/cost.md:

1. network forward+backward on the plans' batch (time; peak memory in a fresh process per network),
2. one training step, ``trainer.train_step`` on pre-fetched batches (data loading excluded; for the
   semi-supervised trainers: teacher forward, student forward/backward on labeled + unlabeled, EMA update),
   time and peak memory,
3. data: the unlabeled loader's throughput on its own against the rate the step consumes its batches, and the
   share of a step spent waiting for batches with the live loaders,
4. inference per test case through nnU-Net's predictor (sliding window, mirroring: nnUNetv2_predict's defaults).

Timings are medians over ``--repeats`` interleaved runs (A, B, A, B, ...): compare ratios, not seconds, on a noisy
machine. Without ``--dataset-id`` a phantom dataset is made, planned and preprocessed in the work folder first.
``--sections`` picks what to measure (all four by default).

Measured as nnU-Net trains (see network_benchmark.py): ``cudnn.benchmark = True`` in this process and in every fresh
one; the network section runs network_benchmark's ForwardBackward (fp16 autocast + GradScaler on CUDA); the trainers'
own train_step does the same; ``--compile`` compiles the networks of the network section and switches nnU-Net's
compilation of the trainers on (``nnUNet_compile``; nnU-Net compiles only on CUDA), and without it both run eager.
The printed header names these settings.

    python benchmarks/cost_benchmark.py --workdir cost_benchmark                  # CPU: 2 mm phantom
    python benchmarks/cost_benchmark.py --workdir cost_benchmark --device cuda --spacing 1 --compile
    python benchmarks/cost_benchmark.py --workdir /tmp/cost --device cuda --sections step --cases 6 --repeats 2
"""
import argparse
import itertools
import os
import statistics
import sys
import time
from functools import partial
from typing import Dict, List, Tuple

import torch
from network_benchmark import ForwardBackward, apply_training_settings, maybe_compile, peak_memory_of, settings_header

from nnunet_mem_cif.nnunet_commands import nnunet_environment, prepare_phantom_dataset
from nnunet_mem_cif.measure import in_fresh_process, interleaved_seconds, timed

BASELINE = "nnUNetTrainer"
METHOD = "MemCifSemiTrainer"
COST_DATASET_ID = 992
COST_DATASET_NAME = "CostPhantom"
CONFIGURATION = "3d_fullres"
SECTIONS = ("network", "step", "data", "inference")
TARGETS = {"network fwd+bwd time": 1.3, "network peak memory": 1.5, "training step time": 2.3,
           "training step peak memory": 1.5, "inference time per case": 1.3}


# ---------------------------------------------------------------------------------------------- building blocks
def make_trainer(dataset: str, trainer_name: str, device: torch.device, **attributes):
    """A trainer as nnUNetv2_train makes it (fold 'all'), ``attributes`` set, initialised up to the first step."""
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(dataset, CONFIGURATION, "all", trainer_name, device=device)
    for key, value in attributes.items():
        setattr(trainer, key, value)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


def build_network(dataset: str, trainer_name: str, device: torch.device) -> Tuple[torch.nn.Module, int, List[int]]:
    """The network ``trainer_name`` trains (from the dataset's plans, without creating the trainer), the plans'
    batch size and patch size."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = PlansManager(os.path.join(preprocessed_folder(dataset), "nnUNetPlans.json"))
    configuration = plans.get_configuration(CONFIGURATION)
    dataset_json = load_dataset_json(dataset)
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    network = trainer_class.build_network_architecture(plans, configuration, len(dataset_json["channel_names"]),
                                                       plans.get_label_manager(dataset_json).num_segmentation_heads)
    return network.to(device), configuration.batch_size, configuration.patch_size


def preprocessed_folder(dataset: str) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    return os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))


def load_dataset_json(dataset: str) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    return load_json(os.path.join(preprocessed_folder(dataset), "dataset.json"))


# ---------------------------------------------------------------------------------------------- fresh-process probes
def network_peak_memory_mib(dataset: str, trainer_name: str, device_name: str, compile_network: bool = False) -> float:
    """In a fresh process, under the same settings as the timings (network_benchmark.peak_memory_of)."""
    apply_training_settings()
    device = torch.device(device_name)
    network, batch_size, patch_size = build_network(dataset, trainer_name, device)
    batch = torch.randn(batch_size, len(load_dataset_json(dataset)["channel_names"]), *patch_size, device=device)
    return peak_memory_of(partial(ForwardBackward(maybe_compile(network, compile_network), device), batch), device)


def training_step_peak_memory_mib(dataset: str, trainer_name: str, device_name: str) -> float:
    """In a fresh process; compilation follows ``nnUNet_compile``, which the process inherits."""
    apply_training_settings()
    trainer = make_trainer(dataset, trainer_name, torch.device(device_name))
    batches = iter([next(trainer.dataloader_train) for _ in range(2)])
    try:
        return peak_memory_of(lambda: trainer.train_step(next(batches)), trainer.device)
    finally:
        trainer.on_train_end()


# ---------------------------------------------------------------------------------------------- sections
def measure_network(dataset: str, names: List[str], device: torch.device, repeats: int,
                    compile_network: bool = False) -> Tuple[Dict[str, List[float]], int, List[int]]:
    """Interleaved forward+backward times of each trainer's network, and the plans' batch and patch size."""
    networks = {name: build_network(dataset, name, device) for name in names}
    _, batch_size, patch_size = networks[names[0]]
    batch = torch.randn(batch_size, len(load_dataset_json(dataset)["channel_names"]), *patch_size, device=device)
    times = interleaved_seconds({name: partial(ForwardBackward(maybe_compile(network, compile_network), device), batch)
                                 for name, (network, _, _) in networks.items()}, repeats, device)
    return times, batch_size, patch_size


def measure_training_steps(trainers: Dict[str, object], repeats: int) -> Dict[str, List[float]]:
    """train_step on pre-fetched batches: the unlabeled loader is swapped for a list of its own batches."""
    labeled = {name: [next(t.dataloader_train) for _ in range(repeats + 1)] for name, t in trainers.items()}
    live_unlabeled = {}
    for name, trainer in trainers.items():
        if hasattr(trainer, "dataloader_unlabeled"):
            live_unlabeled[name] = trainer.dataloader_unlabeled
            trainer.dataloader_unlabeled = itertools.cycle([next(live_unlabeled[name]) for _ in range(repeats + 1)])
    times = {name: [] for name in trainers}
    try:
        for step in range(repeats + 1):  # step 0 is the warm-up
            for name, trainer in trainers.items():
                seconds = timed(lambda: trainer.train_step(labeled[name][step]), trainer.device)
                if step > 0:
                    times[name].append(seconds)
    finally:
        for name, loader in live_unlabeled.items():
            trainers[name].dataloader_unlabeled = loader
    return times


class _TimedLoader:
    """Wraps a loader and adds up the time ``next`` blocks."""

    def __init__(self, loader):
        self.loader, self.waited = loader, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.waited += time.perf_counter() - start
        return batch


def measure_data(trainer, steps: int) -> Dict[str, float]:
    """Unlabeled loader alone (what its workers buffered drained first) vs consumption; waiting for data during
    live steps."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    loader = trainer.dataloader_unlabeled
    workers = loader.num_processes if isinstance(loader, NonDetMultiThreadedAugmenter) else 0
    buffered = 2 * loader.num_cached + workers if workers else 0  # worker queue + pin-memory queue + in hand
    for _ in range(buffered):
        next(loader)
    batches = 4 * steps
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    throughput = batches / (time.perf_counter() - start)

    unlabeled = trainer.dataloader_unlabeled = _TimedLoader(loader)
    labeled = _TimedLoader(trainer.dataloader_train)
    try:
        time.sleep(10)  # let the workers refill their caches, as they do while the previous step computes
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(next(labeled))
        total = time.perf_counter() - start
    finally:
        trainer.dataloader_unlabeled = loader
    return {"unlabeled batches/s alone": throughput, "workers": max(workers, 1),
            "waiting share": (labeled.waited + unlabeled.waited) / total, "live step s": total / steps}


def measure_inference(dataset: str, trainers: Dict[str, object], device: torch.device,
                      repeats: int) -> Dict[str, List[float]]:
    """nnU-Net's predictor on the raw test cases (default sliding window and mirroring), seconds per case."""
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    images = join(nnUNet_raw, maybe_convert_to_dataset_name(dataset), "imagesTs")
    num_cases = len({name.rsplit("_", 1)[0] for name in os.listdir(images) if name.endswith(".nii.gz")})
    predictors = {}
    for name, trainer in trainers.items():
        trainer.on_train_end()  # nnU-Net writes checkpoint_final.pth (random weights: same cost as trained ones)
        predictor = nnUNetPredictor(device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(os.path.dirname(trainer.output_folder), use_folds=("all",),
                                                       checkpoint_name="checkpoint_final.pth")
        predictors[name] = (predictor, join(os.path.dirname(trainer.output_folder), "benchmark_predictions"))
    times = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, (predictor, output) in predictors.items():
            seconds = timed(lambda: predictor.predict_from_files(images, output, save_probabilities=False,
                                                                 overwrite=True, num_processes_preprocessing=1,
                                                                 num_processes_segmentation_export=1), device)
            times[name].append(seconds / num_cases)
    return times


# ---------------------------------------------------------------------------------------------- report
def ratio_row(what: str, unit: str, baseline: float, value: float, name: str) -> str:
    ratio = value / baseline
    target = TARGETS.get(what)
    verdict = "" if target is None else (f"<= {target}: met" if ratio <= target else f"<= {target}: **missed**")
    spec = ".0f" if unit == "MiB" else ".3g"  # significant digits for times: a GPU step takes tens of milliseconds
    return f"| {what} | {name} | {baseline:{spec}} {unit} | {value:{spec}} {unit} | {ratio:.2f} | {verdict} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="cost_benchmark", help="nnU-Net folders and the phantom go here")
    parser.add_argument("--dataset-id", default=None,
                        help="an already planned and preprocessed dataset (3d_fullres) in the work folder's "
                             "nnUNet_preprocessed, with preprocess-unlabeled done; default: make a phantom one")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm (default 2)")
    parser.add_argument("--cases", type=int, default=8, help="phantom cases (default 8: 6 training, 2 test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the networks and let nnU-Net compile the trainers' networks "
                             "(nnUNet_compile=1; nnU-Net's default on CUDA); otherwise everything runs eager")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--prepare-only", action="store_true",
                        help="make, plan and preprocess the phantom dataset, then stop (it can run on the CPU while "
                             "other work uses the GPU)")
    parser.add_argument("--trainers", nargs="+", default=[BASELINE, "MemCifTrainer", "MeanTeacherTrainer",
                                                          METHOD],
                        help=f"trainers timed in the training-step section; {BASELINE} and {METHOD} always")
    args = parser.parse_args()

    apply_training_settings()
    device = torch.device(args.device)
    workdir = os.path.abspath(args.workdir)
    env = nnunet_environment(workdir, device.type)
    env["nnUNet_compile"] = "1" if args.compile else "0"  # inherited by the fresh processes too
    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet")})  # before nnU-Net reads its paths
    dataset = args.dataset_id
    if dataset is None:
        dataset = str(COST_DATASET_ID)
        if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], f"Dataset{COST_DATASET_ID}_{COST_DATASET_NAME}",
                                          "nnUNetPlans_3d_fullres_unlabeled")):
            prepare_phantom_dataset(workdir, COST_DATASET_ID, COST_DATASET_NAME, num_cases=args.cases,
                                    spacing=args.spacing, labeled_fraction=0.5, test_fraction=0.25, seed=0, env=env)
    if args.prepare_only:
        print(f"dataset {dataset} prepared in {workdir}")
        return
    names = list(dict.fromkeys([BASELINE] + args.trainers + [METHOD]))
    sections = set(args.sections)
    started = time.time()
    median = statistics.median
    rows = []

    if "network" in sections:
        print("network forward+backward ...", flush=True)
        network_times, batch_size, patch_size = measure_network(dataset, [BASELINE, METHOD], device, args.repeats,
                                                                args.compile)
        network_memory = {name: in_fresh_process(network_peak_memory_mib, dataset, name, device.type, args.compile)
                          for name in (BASELINE, METHOD)}
        rows.append(ratio_row("network fwd+bwd time", "s", median(network_times[BASELINE]),
                              median(network_times[METHOD]), METHOD))
        rows.append(ratio_row("network peak memory", "MiB", network_memory[BASELINE], network_memory[METHOD], METHOD))

    trainers, step_times = {}, {}
    if sections & {"step", "data", "inference"}:
        trainers = {name: make_trainer(dataset, name, device) for name in names}
        batch_size = trainers[BASELINE].batch_size
        patch_size = list(trainers[BASELINE].configuration_manager.patch_size)
    try:
        if "step" in sections:
            print("training step ...", flush=True)
            step_memory = {name: in_fresh_process(training_step_peak_memory_mib, dataset, name, device.type)
                           for name in (BASELINE, METHOD)}
            half = max(1, trainers[METHOD].batch_size // 2)
            half_name = f"{METHOD} with unlabeled_batch_size={half}"
            trainers[half_name] = make_trainer(dataset, METHOD, device, unlabeled_batch_size=half)
            step_times = measure_training_steps(trainers, args.repeats)
            trainers.pop(half_name).on_train_end()
            for name in names[1:] + [half_name]:
                what = "training step time" if name == METHOD else "training step time (for comparison)"
                rows.append(ratio_row(what, "s", median(step_times[BASELINE]), median(step_times[name]), name))
            rows.append(ratio_row("training step peak memory", "MiB", step_memory[BASELINE], step_memory[METHOD],
                                  METHOD))
        data = None
        if "data" in sections:
            print("data loading ...", flush=True)
            data = measure_data(trainers[METHOD], steps=max(3, args.repeats))
        for name in names:
            if name not in (BASELINE, METHOD) or "inference" not in sections:
                trainers.pop(name).on_train_end()  # stop their loader workers
        if "inference" in sections:
            print("inference ...", flush=True)
            inference_times = measure_inference(dataset, trainers, device, max(1, args.repeats - 1))
            trainers = {}
            rows.append(ratio_row("inference time per case", "s", median(inference_times[BASELINE]),
                                  median(inference_times[METHOD]), METHOD))
    finally:
        for trainer in trainers.values():
            trainer.on_train_end()

    print(f"\n{settings_header(device, args.compile)}, nnUNet_compile {os.environ['nnUNet_compile']}")
    print(f"dataset {dataset}, {CONFIGURATION}, batch {batch_size} x patch {tuple(patch_size)}, "
          f"nnUNet_n_proc_DA {os.environ.get('nnUNet_n_proc_DA')}; sections {', '.join(args.sections)}; medians of "
          f"{args.repeats} interleaved runs; {(time.time() - started) / 60:.1f} min\n")
    print(f"| measurement | trainer | {BASELINE} | trainer's | ratio | target |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if data is not None:
        consumption = 1 / median(step_times[METHOD]) if step_times else data["live step s"] ** -1
        print(f"\nunlabeled loader alone: {data['unlabeled batches/s alone']:.2f} batches/s from {data['workers']} "
              f"worker process(es) vs {consumption:.3f} consumed per second by {METHOD}'s step "
              f"({data['unlabeled batches/s alone'] / consumption:.1f}x); "
              f"with live loaders {data['waiting share']:.0%} of a step ({data['live step s']:.2f} s) is spent "
              f"waiting for batches")


if __name__ == "__main__":
    sys.exit(main())
