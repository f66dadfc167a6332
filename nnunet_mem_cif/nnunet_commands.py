"""Running nnU-Net's commands as a user types them: the environment they run in, one step at a time with its output
in a log and a progress bar, one line when a step fails, and the phantom dataset every experiment starts from.

The demo (nnunet_mem_cif/demo.py), the results table (nnunet_mem_cif/results_table.py) and the scripts in
benchmarks/ and experiments/ all run nnU-Net through this module, each with its environment passed explicitly.
"""
import os
import re
import shutil
import signal
import subprocess
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from nnunet_mem_cif.discovery import console_script, ext_trainer_value
from nnunet_mem_cif.errors import PluginUserError


def nnunet_folder(variable: str, error: type) -> str:
    """The folder nnU-Net's environment variable ``variable`` names, or ``error`` saying to set it: checked up front,
    where nnU-Net itself would only warn and then fail on a path of ``None``."""
    value = os.environ.get(variable)
    if not value:
        raise error(f"{variable} is not set: export it as for nnU-Net itself (see nnU-Net's "
                    f"documentation/setting_up_paths.md).")
    return value


def resolve_device(requested: str, error: type) -> str:
    """``--device``: ``auto`` resolved; ``cuda`` refused up front where torch sees no GPU (rather than in nnU-Net's
    log later), with ``error``, the calling command's error class."""
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise error("--device cuda, but torch sees no CUDA GPU. Use --device cpu (slow) or run on a machine with one.")
    return ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested


def nnunet_environment(workdir: str, device: str) -> Dict[str, str]:
    """``nnunet_command_environment`` with nnU-Net's three folders inside ``workdir``."""
    return nnunet_command_environment(device, raw=os.path.join(workdir, "nnUNet_raw"),
                                      preprocessed=os.path.join(workdir, "nnUNet_preprocessed"),
                                      results=os.path.join(workdir, "nnUNet_results"))


def nnunet_command_environment(device: str, *, raw: str, preprocessed: str, results: str) -> Dict[str, str]:
    """The environment nnU-Net's commands run in: the given folders, this plugin's trainers findable, CPU-friendly
    worker counts (where the user has not set their own)."""
    env = dict(os.environ)
    env.update(nnUNet_raw=raw, nnUNet_preprocessed=preprocessed, nnUNet_results=results,
               nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer")),
               PYTHONUNBUFFERED="1")  # line by line into the logs and progress bars
    if device == "cpu":
        cores = os.cpu_count() or 2
        env.setdefault("nnUNet_compile", "0")
        env.setdefault("nnUNet_n_proc_DA", str(max(1, min(4, cores - 1))))
        env.setdefault("nnUNet_def_n_proc", str(max(1, min(4, cores))))
    return env


class StepFailed(PluginUserError, RuntimeError):
    """One of nnU-Net's commands failed: its last output line and the full log say why (a traceback through
    ``subprocess`` would not)."""


def run_step(title: str, command: List[str], env: Dict[str, str], log_file: str,
             progress_pattern: Optional[str] = None, total: Optional[int] = None, done: int = 0) -> None:
    """Run one command, its output to ``log_file``, with a progress bar (advanced on ``progress_pattern`` lines).

    ``done`` > 0 continues an interrupted step (a resumed training): the bar starts there, and the output is
    appended to the log after the earlier attempt's, which is kept.

    The command runs in a process group of its own, which an interrupt of this process (Ctrl-C, or SIGTERM turned
    into one by the command line) ends whole: nnU-Net's data-augmentation workers included, which would otherwise
    keep training (and holding the GPU) after the command that started them has gone.
    """
    pattern = re.compile(progress_pattern) if progress_pattern else None
    # line-buffered: the log is readable while a long step (a training) is still running
    with open(log_file, "a" if done else "w", buffering=1) as log, \
            tqdm(total=total, initial=done, desc=title, unit="epoch" if total else "line", leave=True) as bar:
        log.write(("\n" if done else "") + "$ " + " ".join(command) + "\n")
        last_line = ""
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, start_new_session=True)
        try:
            for line in process.stdout:
                log.write(line)
                if pattern is None or pattern.search(line):
                    bar.update(1)
                bar.set_postfix_str(line.strip()[-60:], refresh=True)
                last_line = line.strip() or last_line
            code = process.wait()
        except BaseException:
            end_process_group(process)
            raise
    if code != 0:
        raise StepFailed(f"{title} failed (exit code {code}): {last_line!r}; full output in {log_file}")


def end_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to ``process`` and every process it started (its process group), SIGKILL to what is left after
    ``grace`` seconds or once the leader has gone."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their parent, or a parent that hung
    except ProcessLookupError:
        pass
    process.wait()


def prepare_phantom_dataset(workdir: str, dataset_id: int, dataset_name: str, num_cases: int, spacing: float,
                            labeled_fraction: Optional[float], test_fraction: float, seed: int, env: Dict[str, str],
                            step_names: Sequence[str] = ("[1/4]", "[2/4]", "[3/4]", "[4/4]")) -> str:
    """Phantom cases -> BraTS conversion -> nnUNetv2_plan_and_preprocess (3d_fullres) -> preprocess-unlabeled.

    Everything inside ``workdir`` (nnU-Net's folders from ``env``, as ``nnunet_environment`` makes them; every step
    runs in ``env``, nothing reads this process's environment); returns the raw dataset folder.
    ``labeled_fraction=None`` keeps every training case labeled (no unlabeled folder).
    """
    from nnunet_mem_cif.brats import convert_brats2019
    from nnunet_mem_cif.phantom import make_phantom
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    print(f"{step_names[0]} phantom cases (MNI152 anatomy from nilearn, synthetic tumors)")
    phantom = os.path.join(workdir, "brats2019_phantom")
    shutil.rmtree(phantom, ignore_errors=True)
    make_phantom(phantom, num_cases, seed=seed, spacing=spacing)

    labeled = "all" if labeled_fraction is None else f"{labeled_fraction:.0%} of the"
    print(f"{step_names[1]} BraTS 2019 layout -> nnU-Net dataset ({labeled} training cases labeled)")
    dataset = convert_brats2019(phantom, env["nnUNet_raw"], dataset_id, dataset_name, test_fraction=test_fraction,
                                labeled_fraction=labeled_fraction, seed=seed, overwrite=True)
    shutil.rmtree(os.path.join(env["nnUNet_preprocessed"], os.path.basename(dataset)), ignore_errors=True)

    run_step(f"{step_names[2]} nnUNetv2_plan_and_preprocess", [console_script("nnUNetv2_plan_and_preprocess"), "-d",
             str(dataset_id), "-c", "3d_fullres", "-np", "2", "-npfp", "2"], env,
             os.path.join(logs, "plan_and_preprocess.log"))
    if labeled_fraction is not None:
        run_step(f"{step_names[3]} nnunet-mem-cif preprocess-unlabeled", [console_script("nnunet-mem-cif"),
                 "preprocess-unlabeled", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1"], env,
                 os.path.join(logs, "preprocess_unlabeled.log"))
    return dataset
