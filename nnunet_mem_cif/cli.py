"""``nnunet-mem-cif``: the plugin's command line (nnU-Net's own commands do planning, training and prediction)."""
import argparse
import json
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, List, Optional

from nnunet_mem_cif.discovery import ext_trainer_folder, ext_trainer_value
from nnunet_mem_cif.errors import PluginUserError, user_error_line


def _cmd_env(args: argparse.Namespace) -> int:
    print("# Lets nnU-Net (nnUNetv2_train / nnUNetv2_predict) find the nnunet-mem-cif trainers.")
    print("# Use:  eval \"$(nnunet-mem-cif env)\"   or add the line below to your shell profile.")
    print(f"export nnUNet_extTrainer={shlex.quote(ext_trainer_value(os.environ.get('nnUNet_extTrainer')))}")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if variable not in os.environ:
            print(f"# note: {variable} is not set; nnU-Net needs it (see nnU-Net's documentation/setting_up_paths.md)")
    return 0


def _cmd_preprocess_unlabeled(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.ssl.unlabeled_data import preprocess_unlabeled
    folder = preprocess_unlabeled(args.d, args.c, args.p, args.np, overwrite=args.overwrite)
    print(f"Unlabeled cases preprocessed into {folder}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.brats import BratsConversionError, convert_brats2019
    from nnunet_mem_cif.nnunet_commands import nnunet_folder
    raw_root = nnunet_folder("nnUNet_raw", BratsConversionError)
    target = convert_brats2019(args.brats_dir, raw_root, args.dataset_id, args.name, args.subset,
                               args.test_fraction, args.labeled_fraction, args.seed, args.overwrite)
    with open(os.path.join(target, "conversion.json")) as f:
        split = json.load(f)["cases"]
    from nnunet_mem_cif.leakage import TEST_FOLDER, TRAINING_FOLDER, UNLABELED_FOLDER
    for group, folder in (("labeled", TRAINING_FOLDER), ("unlabeled", UNLABELED_FOLDER), ("test", TEST_FOLDER)):
        print(f"{group} ({folder}, {len(split[group])}): {' '.join(split[group])}")
    print(f"Wrote {target}; the case lists are recorded in {os.path.join(target, 'conversion.json')}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.phantom import make_phantom
    cases = make_phantom(args.output_dir, args.cases, args.seed, args.spacing, overwrite=args.overwrite,
                         variation=args.variation)
    print(f"Wrote {len(cases)} phantom cases to {os.path.join(args.output_dir, 'HGG')}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.evaluation import check_results_path, evaluate_folders, markdown_table, write_results
    if args.o:
        check_results_path(args.o, args.pred_dir, args.gt_dir, args.overwrite)
    results = evaluate_folders(args.pred_dir, args.gt_dir, brats_labels=args.brats_labels)
    print(markdown_table(results))
    if args.o:
        csv_file, markdown_file = write_results(results, args.o)
        print(f"Wrote {args.o}, {csv_file}, {markdown_file}")
    return 0


def _cmd_to_brats(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.brats import convert_predictions_to_brats
    count = convert_predictions_to_brats(args.pred_dir, args.output_dir, overwrite=args.overwrite)
    print(f"Wrote {count} BraTS-labelled (0/1/2/4) segmentations to {args.output_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.demo import run_demo
    run_demo(args.workdir, args.cases, args.spacing, device=args.device, seed=args.seed, overwrite=args.overwrite)
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from nnunet_mem_cif.nnunet_commands import resolve_device
    from nnunet_mem_cif.results_table import TableError, command_line, run_table, write_report
    if args.report_only:
        if not os.path.isdir(os.path.join(args.output_dir, "runs")):
            raise TableError(f"--report-only: {args.output_dir} holds no table runs (no runs/ folder). Give "
                             f"the --output-dir of an earlier table.")
        for path in write_report(args.output_dir):
            print(f"wrote {path}")
        return 0
    device = resolve_device(args.device, TableError)
    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    run_table(args.dataset_id, args.output_dir, args.fractions, args.methods, args.epochs, args.iterations,
              args.seeds, device, args.fold, command_line(), args.configuration, args.batch_size, args.disable_tta,
              args.consistency_weight, args.lr_multipliers)
    print(f"table: {os.path.join(os.path.abspath(args.output_dir), 'results.md')} (.csv, .png beside it)")
    return 0


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a malformed command line ends like every other user error: one line, exit 2 (argparse prints
    the whole usage text first). ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="nnunet-mem-cif", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    env = sub.add_parser("env", help="print the export line that lets nnU-Net find this plugin's trainers",
                         description=f"Prints 'export nnUNet_extTrainer=...' for the folder {ext_trainer_folder()} "
                                     f"(keeping other folders already in nnUNet_extTrainer).")
    env.set_defaults(func=_cmd_env)

    pre = sub.add_parser("preprocess-unlabeled", help="preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled",
                         description="Preprocesses nnUNet_raw/DatasetXXX/imagesUnlabeled/ with the plans and "
                                     "preprocessor of CONFIG into nnUNet_preprocessed/DatasetXXX/"
                                     "<data_identifier>_unlabeled/. Run nnUNetv2_plan_and_preprocess first. Refuses "
                                     "unlabeled cases that are also in imagesTr or imagesTs (same name or same "
                                     "image content).")
    pre.add_argument("-d", required=True, help="dataset id or name, as for nnUNetv2_train")
    pre.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    pre.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    pre.add_argument("-np", type=int, default=4, help="number of processes (default: 4)")
    pre.add_argument("--overwrite", action="store_true", help="replace earlier preprocessed unlabeled cases whole")
    pre.set_defaults(func=_cmd_preprocess_unlabeled, all_or_nothing=True)

    conv = sub.add_parser("convert-brats2019", help="official BraTS 2019 folder -> $nnUNet_raw/DatasetNNN_NAME",
                          description="Reads BRATS_DIR/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz (never "
                                      "modifies it) and writes a region-based nnU-Net dataset: channels 0 T1, 1 T1ce, "
                                      "2 T2, 3 FLAIR; labels 2->1, 1->2, 4->3; a seeded held-out test split in "
                                      "imagesTs/labelsTs; with --labeled-fraction, the other training cases in "
                                      "imagesUnlabeled.")
    conv.add_argument("brats_dir")
    conv.add_argument("--dataset-id", type=int, required=True)
    conv.add_argument("--name", default="BraTS2019")
    conv.add_argument("--subset", choices=["HGG", "LGG", "all"], default="HGG", help="default HGG (the paper's)")
    conv.add_argument("--test-fraction", type=float, default=0.2)
    conv.add_argument("--labeled-fraction", type=float, default=None)
    conv.add_argument("--seed", type=int, default=12345)
    conv.add_argument("--overwrite", action="store_true", help="replace an existing target dataset folder")
    conv.set_defaults(func=_cmd_convert, all_or_nothing=True)

    ph = sub.add_parser("make-phantom", help="BraTS-like phantom cases in the official BraTS 2019 layout",
                        description="Real MNI152 anatomy (bundled with nilearn) with synthetic tumors, four contrasts, "
                                    "bias field, noise and per-modality misregistration. Seeded.")
    ph.add_argument("output_dir")
    ph.add_argument("--cases", type=int, required=True)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size in mm (default 1.0, as BraTS)")
    ph.add_argument("--variation", type=int, default=1,
                    help="docs/phantom.md: 1 (default) as the tests, the demo and the first evidence table; 2 adds "
                         "19 sites, weak and patchy enhancement and satellite foci")
    ph.add_argument("--overwrite", action="store_true", help="replace an earlier phantom in OUTPUT_DIR")
    ph.set_defaults(func=_cmd_phantom, all_or_nothing=True)

    ev = sub.add_parser("evaluate", help="Dice / Sensitivity / HD95 for whole tumor, tumor core, enhancing tumor",
                        description="Compares each reference segmentation in GT_DIR with the file of the same name in "
                                    "PRED_DIR. Labels: nnU-Net's BraTS convention (1, 2, 3) unless --brats-labels "
                                    "(0/1/2/4). Empty masks: see nnunet_mem_cif/evaluation.py.")
    ev.add_argument("pred_dir")
    ev.add_argument("gt_dir")
    ev.add_argument("-o", help="write this JSON, plus .csv and .md beside it")
    ev.add_argument("--brats-labels", action="store_true")
    ev.add_argument("--overwrite", action="store_true", help="replace existing -o results files")
    ev.set_defaults(func=_cmd_evaluate, all_or_nothing=True)

    tb = sub.add_parser("to-brats-labels", help="convert nnU-Net predictions (1/2/3) to BraTS labels (1/2/4)",
                        description="Writes OUTPUT_DIR whole or not at all; OUTPUT_DIR must be new or empty, or an "
                                    "earlier output replaced with --overwrite.")
    tb.add_argument("pred_dir")
    tb.add_argument("output_dir")
    tb.add_argument("--overwrite", action="store_true", help="replace an earlier OUTPUT_DIR whole")
    tb.set_defaults(func=_cmd_to_brats, all_or_nothing=True)

    demo = sub.add_parser("demo", help="the whole workflow on phantom data, in one command",
                          description="phantom -> convert (10%% labeled) -> nnUNetv2_plan_and_preprocess -> "
                                      "preprocess-unlabeled -> nnUNetv2_train MemCifSemiTrainer_demo -> "
                                      "nnUNetv2_predict -> evaluate; prints the table, saves curves and overlays.")
    demo.add_argument("--workdir", default="mem_cif_demo")
    demo.add_argument("--cases", type=int, default=20)
    demo.add_argument("--spacing", type=float, default=4.0)
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier, finished demo in WORKDIR whole")
    demo.set_defaults(func=_cmd_demo, all_or_nothing=True)

    from nnunet_mem_cif.results_table import DEFAULT_METHODS, METHODS, parse_lr_multipliers
    table = sub.add_parser("table", help="the paper's table: methods x labeled fractions, one command",
                           description="Trains every method at every labeled fraction (and seed) on the same fold of "
                                       "a fully labeled, planned and preprocessed dataset through nnUNetv2_train, "
                                       "predicts imagesTs, evaluates against labelsTs and writes results.md/.csv/.png "
                                       "to OUTPUT_DIR. Finished runs are skipped, interrupted ones resumed. Methods: "
                                       + ", ".join(f"{k} ({v.row})" for k, v in METHODS.items()) + ".")
    table.add_argument("--dataset-id", type=int, required=True)
    table.add_argument("--output-dir", default="mem_cif_table")
    table.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.10])
    table.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, metavar="METHOD",
                       help="default: every row but the candidates (" + ", ".join(
                           k for k in METHODS if k not in DEFAULT_METHODS) + ")")
    table.add_argument("--epochs", type=int, default=1000, help="default 1000 (nnU-Net's)")
    table.add_argument("--iterations", type=int, default=250, help="per epoch; default 250 (nnU-Net's)")
    table.add_argument("--seeds", type=int, nargs="+", default=[0])
    table.add_argument("-c", "--configuration", default="3d_fullres", help="nnU-Net configuration: 3d_fullres "
                       "(default) or 2d; planned and preprocessed beforehand")
    table.add_argument("--batch-size", type=int, default=None, help="replaces the plans' batch size in every row "
                       "alike (default: the plans')")
    table.add_argument("--disable-tta", action="store_true", help="predict validation, unlabeled and test cases "
                       "without mirroring, in every row alike (nnUNetv2_predict --disable_tta); 4x (2d) to 8x (3d) "
                       "less inference time")
    table.add_argument("--consistency-weight", type=float, default=None, help="the semi-supervised rows' consistency "
                       "weight (default: the trainers', 1.0); choose it on validation cases (docs/results.md)")
    table.add_argument("--lr-multipliers", type=parse_lr_multipliers, default=None, metavar="MEM:CIF",
                       help="MEM's and CIF's lr multipliers in the MEM + CIF rows (default: the trainers', 30:150)")
    table.add_argument("--fold", default="0", help="nnU-Net fold (default 0; 'all' is not supported)")
    table.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    table.add_argument("--report-only", action="store_true", help="only rewrite results.* from finished runs")
    table.set_defaults(func=_cmd_table, all_or_nothing=True)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up (temporary files and folders removed) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM (``kill``, a batch scheduler's time limit) raises ``Terminated`` instead of ending the
    process on the spot, which would leave temporary folders behind."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers can only be set there
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def _run(args: argparse.Namespace) -> int:
    """Commands marked ``all_or_nothing`` (those that write folders all or nothing, or run nnU-Net's commands as
    child processes) end an interrupt (Ctrl-C, SIGTERM) with one line and 128 + signal number, once their clean-up
    has run (temporaries removed, child processes ended)."""
    if not getattr(args, "all_or_nothing", False):
        return args.func(args)
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"nnunet-mem-cif: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except PluginUserError as e:
        print(user_error_line(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
