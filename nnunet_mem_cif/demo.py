"""``nnunet-mem-cif demo``: phantom -> BraTS conversion (10 % labeled) -> nnU-Net planning and preprocessing ->
unlabeled preprocessing -> MemCifSemiTrainer (short schedule) -> prediction -> evaluation, in one work folder.

Every nnU-Net step runs nnU-Net's own command-line tool, exactly as a user would type it; their full output goes to
``WORKDIR/logs/``. Uses CUDA when torch sees a GPU, the CPU otherwise.
"""
import json
import os
import shutil
import sys
import time
from datetime import datetime
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from nnunet_mem_cif.atomic import check_output_folder, write_atomically
from nnunet_mem_cif.discovery import console_script
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.nnunet_commands import nnunet_environment, prepare_phantom_dataset, resolve_device, run_step

DEMO_TRAINER = "MemCifSemiTrainer_demo"
DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "PhantomBraTS"
DEMO_DATASET = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"
# written into WORKDIR first ({"complete": false}) and last ({"complete": true}): what makes a folder the demo's own
DEMO_MARKER = ".nnunet-mem-cif-demo"


class DemoError(PluginUserError, ValueError):
    """An argument or work folder the demo cannot run with; the message says what to do."""


def save_overlays(images_folder: str, labels_folder: str, predictions_folder: str, output_folder: str,
                  max_cases: int = 4) -> List[str]:
    """PNG per test case: FLAIR with the reference and with the prediction, on the slice with most tumor."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from nnunetv2.utilities.overlay_plots import generate_overlay
    os.makedirs(output_folder, exist_ok=True)
    written = []
    mapping = {1: 1, 2: 2, 3: 3}  # edema, core, enhancing -> nnU-Net's color cycle (entry 0 is black)
    for name in sorted(f for f in os.listdir(labels_folder) if f.endswith(".nii.gz"))[:max_cases]:
        case = name[:-len(".nii.gz")]
        flair = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(images_folder, f"{case}_0003.nii.gz")))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(labels_folder, name)))
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(predictions_folder, name)))
        z = int(np.argmax((reference > 0).sum((1, 2))))
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
        panels = [("FLAIR", flair[z]), ("reference", generate_overlay(flair[z], reference[z], mapping)),
                  ("MemCifSemiTrainer", generate_overlay(flair[z], prediction[z], mapping))]
        for ax, (title, image) in zip(axes, panels):
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(title)
            ax.axis("off")
        fig.suptitle(f"{case}, slice {z}: blue edema, orange necrotic core, green enhancing tumor")
        fig.tight_layout()
        path = os.path.join(output_folder, f"{case}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def check_demo_arguments(num_cases: int, spacing: float, seed: int, labeled_fraction: float,
                         test_fraction: float) -> None:
    """Arguments the demo cannot give a meaningful result with, refused before anything is made: those of the
    phantom and the conversion, and a split without a labeled, an unlabeled or a test case."""
    from nnunet_mem_cif.brats import BratsConversionError, check_split_arguments, split_cases
    from nnunet_mem_cif.phantom import check_phantom_arguments
    check_phantom_arguments(num_cases, seed, spacing)
    check_split_arguments(test_fraction, labeled_fraction, seed)

    def split_works(n: int) -> bool:
        try:
            split = split_cases([f"case{i:04d}" for i in range(n)], test_fraction, labeled_fraction, seed)
        except BratsConversionError:
            return False
        return all(split[group] for group in ("labeled", "unlabeled", "test"))

    if not split_works(num_cases):
        enough = next((n for n in range(num_cases + 1, 1000) if split_works(n)), None)
        raise DemoError(f"--cases {num_cases} is too few: the demo puts {test_fraction:.0%} of the cases in the test "
                        f"set and keeps {labeled_fraction:.0%} of the rest labeled, and needs at least one labeled, "
                        f"one unlabeled and one test case. Use --cases {enough or 'more'} or more.")


def _demo_state(workdir: str) -> Optional[dict]:
    marker = os.path.join(workdir, DEMO_MARKER)
    if not os.path.isfile(marker):
        return None
    try:
        with open(marker) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"complete": False}  # a marker cut short: the demo that wrote it did not finish either


def prepare_workdir(workdir: str, overwrite: bool) -> Optional[str]:
    """Check ``workdir`` (before anything is written); returns what must happen to it: None (new or empty),
    'leftover' (an unfinished earlier demo, removed without asking) or 'replace' (a finished one, ``overwrite``).

    Only a folder the demo marked as its own is ever replaced: ``--overwrite`` with a mistyped path must not delete
    a home folder.
    """
    state = _demo_state(workdir) if os.path.isdir(workdir) and not os.path.islink(workdir) else None
    unfinished = state is not None and not state.get("complete")
    check_output_folder(workdir, overwrite or unfinished, lambda folder: _demo_state(folder) is not None)
    if state is None:
        return None
    return "leftover" if unfinished else "replace"


def _write_marker(workdir: str, complete: bool, arguments: dict) -> None:
    content = {"complete": complete, "arguments": arguments, "time": datetime.now().isoformat(timespec="seconds")}

    def write(partial: str) -> None:
        with open(partial, "w") as f:
            json.dump(content, f, indent=2)
    write_atomically(os.path.join(workdir, DEMO_MARKER), write)


def run_demo(workdir: str, num_cases: int = 20, spacing: float = 4.0, labeled_fraction: float = 0.1,
             test_fraction: float = 0.2, device: str = "auto", seed: int = 0, overwrite: bool = False) -> dict:
    """The whole workflow in ``workdir``. Arguments, device and work folder are checked before anything is made.

    ``workdir`` must be new, empty or an earlier demo's (recognised by its ``DEMO_MARKER``): a finished one is
    replaced whole with ``overwrite``; an unfinished one (an interrupted or failed run, whose logs are kept until
    then) is removed by the next run, which says so.
    """
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    from nnunet_mem_cif.evaluation import evaluate_folders, markdown_table, missed_regions, write_results
    from nnunet_mem_cif.trainers import MemCifSemiTrainer_demo

    start = time.time()
    check_demo_arguments(num_cases, spacing, seed, labeled_fraction, test_fraction)
    device = resolve_device(device, DemoError)
    workdir = os.path.abspath(workdir)
    earlier = prepare_workdir(workdir, overwrite)
    if earlier == "leftover":
        print(f"nnunet-mem-cif: removing {workdir}, left over from an interrupted demo run", file=sys.stderr)
    if earlier:
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    arguments = dict(cases=num_cases, spacing=spacing, labeled_fraction=labeled_fraction,
                     test_fraction=test_fraction, device=device, seed=seed)
    _write_marker(workdir, False, arguments)
    logs, results = os.path.join(workdir, "logs"), os.path.join(workdir, "results")
    for folder in (logs, results):
        os.makedirs(folder, exist_ok=True)
    env = nnunet_environment(workdir, device)
    print(f"nnunet-mem-cif demo in {workdir} on {device}")

    steps = [f"[{i}/7]" for i in range(1, 5)]
    dataset = prepare_phantom_dataset(workdir, DEMO_DATASET_ID, DEMO_DATASET_NAME, num_cases, spacing,
                                      labeled_fraction, test_fraction, seed, env, step_names=steps)
    dataset_name = os.path.basename(dataset)

    # fewer than 5 labeled cases: nnU-Net's 5-fold split is impossible, so train on all labeled cases
    run_step(f"[5/7] nnUNetv2_train {DEMO_TRAINER}", [console_script("nnUNetv2_train"), str(DEMO_DATASET_ID),
             "3d_fullres", "all", "-tr", DEMO_TRAINER, "-device", device], env, os.path.join(logs, "train.log"),
             progress_pattern=r"Epoch time:", total=MemCifSemiTrainer_demo.EPOCHS)
    predictions = os.path.join(workdir, "predictions")
    run_step("[6/7] nnUNetv2_predict", [console_script("nnUNetv2_predict"), "-i",
             os.path.join(dataset, "imagesTs"), "-o", predictions, "-d", str(DEMO_DATASET_ID), "-c", "3d_fullres",
             "-tr", DEMO_TRAINER, "-f", "all", "-device", device, "-npp", "1", "-nps", "1"], env,
             os.path.join(logs, "predict.log"))

    print("[7/7] evaluation, curves, overlays")
    metrics = evaluate_folders(predictions, os.path.join(dataset, "labelsTs"))
    write_results(metrics, os.path.join(results, "metrics.json"))
    identifier = convert_trainer_plans_config_to_identifier(DEMO_TRAINER, "nnUNetPlans", "3d_fullres")
    training_folder = os.path.join(env["nnUNet_results"], dataset_name, identifier, "fold_all")
    shutil.copyfile(os.path.join(training_folder, "progress.png"), os.path.join(results, "progress.png"))
    save_overlays(os.path.join(dataset, "imagesTs"), os.path.join(dataset, "labelsTs"), predictions,
                  os.path.join(results, "overlays"))
    minutes = (time.time() - start) / 60
    print(f"\nTest cases: {len(metrics['cases'])} held-out phantom cases; trainer {DEMO_TRAINER}; {minutes:.1f} min")
    print(markdown_table(metrics))
    labeled = len([f for f in os.listdir(os.path.join(dataset, "labelsTr")) if f.endswith(".nii.gz")])
    for region in missed_regions(metrics):
        # seen in fresh-clone demo runs with every step working (README): a short schedule, not a broken pipeline
        print(f"\n{region} was not found in any test case. The demo trains {MemCifSemiTrainer_demo.EPOCHS} x "
              f"{MemCifSemiTrainer_demo.ITERATIONS} iterations on {labeled} labeled cases, "
              f"which in some runs is too few to learn it (README, 'What the demo printed'); the evidence table's "
              f"longer schedule learns it (docs/results.md).")
    print(f"\nResults: {results} (metrics.json/.csv/.md, progress.png, overlays/); logs: {logs}")
    _write_marker(workdir, True, arguments)
    return metrics
