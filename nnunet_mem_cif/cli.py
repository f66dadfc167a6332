"""``nnunet-mem-cif``: the plugin's command line (nnU-Net's own commands do planning, training and prediction)."""
import argparse
import os
import shlex
import sys
from typing import List, Optional

from nnunet_mem_cif.discovery import ext_trainer_folder, ext_trainer_value


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
    folder = preprocess_unlabeled(args.d, args.c, args.p, args.np)
    print(f"Unlabeled cases preprocessed into {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-mem-cif", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    env = sub.add_parser("env", help="print the export line that lets nnU-Net find this plugin's trainers",
                         description=f"Prints 'export nnUNet_extTrainer=...' for the folder {ext_trainer_folder()} "
                                     f"(keeping other folders already in nnUNet_extTrainer).")
    env.set_defaults(func=_cmd_env)

    pre = sub.add_parser("preprocess-unlabeled", help="preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled",
                         description="Preprocesses nnUNet_raw/DatasetXXX/imagesUnlabeled/ with the plans and "
                                     "preprocessor of CONFIG into nnUNet_preprocessed/DatasetXXX/"
                                     "<data_identifier>_unlabeled/. Run nnUNetv2_plan_and_preprocess first.")
    pre.add_argument("-d", required=True, help="dataset id or name, as for nnUNetv2_train")
    pre.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    pre.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    pre.add_argument("-np", type=int, default=4, help="number of processes (default: 4)")
    pre.set_defaults(func=_cmd_preprocess_unlabeled)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_mem_cif.ssl.unlabeled_data import UnlabeledDataError
    try:
        return args.func(args)
    except UnlabeledDataError as e:
        print(f"nnunet-mem-cif: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
