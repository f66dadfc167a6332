"""Every subcommand (evaluate, to-brats-labels, make-phantom, convert-brats2019, preprocess-unlabeled, table,
demo) checks its input before writing anything, never writes into or over what is not its own, writes folders all or
nothing (also when interrupted), and ends every user error as one line with exit code 2. Leakage between training,
unlabeled and test cases: tests/test_leakage.py."""
import math
import os
import shutil
import signal
import subprocess
from typing import Tuple

import numpy as np
import pytest
import SimpleITK as sitk

import nnunet_mem_cif.brats as brats
import nnunet_mem_cif.evaluation as evaluation
import nnunet_mem_cif.phantom as phantom
from nnunet_mem_cif.atomic import OutputFolderError, atomic_folder, check_output_folder, partial_path
from nnunet_mem_cif.brats import BratsConversionError, convert_predictions_to_brats
from nnunet_mem_cif.cli import main
from nnunet_mem_cif.discovery import console_script
from nnunet_mem_cif.errors import PluginUserError, user_error_line
from nnunet_mem_cif.image_checks import distinct_labels, geometry_difference
from .synthetic_data import make_brats_folder, tree_hash, write_image


def user_error(capsys, *args) -> str:
    """Run the CLI in this process; assert exit code 2 and exactly one line on stderr; return that line."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("nnunet-mem-cif: error: "), err
    return lines[0]


def succeeds(capsys, *args) -> Tuple[str, str]:
    """Run the CLI in this process; assert exit code 0; return stdout and stderr (progress bars included)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def label_folders(tmp_path, cases=("a", "b", "c", "d"), values=(0, 1, 2, 3)):
    """Prediction and reference folders with identical random segmentations (values of one convention)."""
    rng = np.random.default_rng(0)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for case in cases:
        labels = rng.choice(np.array(values, np.uint8), size=(5, 6, 7))
        write_image(labels, gt / f"{case}.nii.gz")
        write_image(labels, pred / f"{case}.nii.gz")
    return pred, gt


# ------------------------------------------------------------------------------------------------ shared helpers

def test_the_installed_command_ends_a_user_error_with_one_line_and_exit_code_2(tmp_path):
    result = subprocess.run([console_script("nnunet-mem-cif"), "to-brats-labels", str(tmp_path / "nowhere"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("nnunet-mem-cif: error: "), result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [["demo", "--cases", "abc"], ["make-phantom"], ["no-such-command"],
                                  ["table", "--dataset-id", "x", "--output-dir", "o"]])
def test_a_malformed_command_line_ends_with_one_line_and_exit_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and "--help" in err, err


def test_user_errors_are_printed_as_one_line():
    assert user_error_line(PluginUserError("first\n  second\n")) == "nnunet-mem-cif: error: first second"


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(str(target)) as partial:
        assert os.path.basename(partial) == ".partial-out" and os.path.dirname(partial) == str(tmp_path)
        open(os.path.join(partial, "a"), "w").close()
        assert not target.exists()
    assert os.listdir(target) == ["a"] and os.listdir(tmp_path) == ["out"]
    for interruption in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with atomic_folder(str(target), overwrite=True) as partial:
                open(os.path.join(partial, "b"), "w").close()
                raise interruption
        assert os.listdir(target) == ["a"] and os.listdir(tmp_path) == ["out"]  # old folder kept, temporary gone
    with atomic_folder(str(target), overwrite=True) as partial:
        open(os.path.join(partial, "b"), "w").close()
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["out"]  # replaced whole, not mixed


def test_atomic_folder_removes_the_leftover_of_a_killed_run_and_says_so(tmp_path, capsys):
    leftover = tmp_path / ".partial-out"
    leftover.mkdir()
    (leftover / "half_written.nii.gz").write_text("")
    with atomic_folder(str(tmp_path / "out") + os.sep) as partial:  # a trailing slash names the same folder
        assert not os.listdir(partial)
    assert "left over from an interrupted run" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(tmp_path / "out") == []


def test_check_output_folder_refuses_what_is_not_ours(tmp_path):
    def never_ours(_):
        return False

    def always_ours(_):
        return True

    check_output_folder(str(tmp_path / "new"), False, never_ours)
    (tmp_path / "empty").mkdir()
    check_output_folder(str(tmp_path / "empty"), False, never_ours)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="not a folder"):
        check_output_folder(str(tmp_path / "file"), True, always_ours)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputFolderError, match="not even with --overwrite"):
        check_output_folder(str(tmp_path / "full"), True, never_ours)
    with pytest.raises(OutputFolderError, match="--overwrite"):
        check_output_folder(str(tmp_path / "full"), False, always_ours)
    check_output_folder(str(tmp_path / "full"), True, always_ours)


def test_label_values_must_be_whole_numbers():
    assert distinct_labels(np.array([[0, 3], [3, 1]], np.uint8), "x") == [0, 1, 3]
    assert distinct_labels(np.array([0.0, 2.0]), "x") == [0, 2]  # whole numbers stored as floats are fine
    for values in ([0, 0.5], [0, np.nan]):
        with pytest.raises(PluginUserError, match="x: holds non-integer values"):
            distinct_labels(np.array(values), "x")


def test_geometry_difference_tolerates_header_rounding_only():
    def image(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), size=(4, 5, 6), direction=None):
        result = sitk.Image(size, sitk.sitkUInt8)
        result.SetSpacing(spacing)
        result.SetOrigin(origin)
        if direction:
            result.SetDirection(direction)
        return result

    reference = image()
    assert geometry_difference(image(spacing=(1.0, 1.0, 2.0 + 1e-6), origin=(1e-6, 0, 0)), reference) is None
    assert geometry_difference(image(size=(4, 5, 7)), reference).startswith("size")
    assert geometry_difference(image(spacing=(1.0, 1.0, 2.01)), reference).startswith("spacing")
    assert geometry_difference(image(origin=(0.0, 0.5, 0.0)), reference).startswith("origin")
    assert geometry_difference(image(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)), reference).startswith("direction")


# ------------------------------------------------------------------------------------------------------ evaluate

def test_evaluate_refuses_float_valued_segmentations(tmp_path, capsys):
    pred, gt = label_folders(tmp_path)
    write_image(np.full((5, 6, 7), 0.5, np.float32), pred / "b.nii.gz")
    line = user_error(capsys, "evaluate", pred, gt)
    assert str(pred / "b.nii.gz") in line and "non-integer values (e.g. 0.5)" in line


@pytest.mark.parametrize("values, flag, advice", [((0, 1, 2, 4), [], "use --brats-labels"),
                                                  ((0, 1, 2, 3), ["--brats-labels"], "drop --brats-labels"),
                                                  ((0, 5, 7), [], "fix or remove this file")])
def test_evaluate_refuses_labels_of_another_convention_and_says_what_to_do(tmp_path, capsys, values, flag, advice):
    pred, gt = label_folders(tmp_path, values=values)
    line = user_error(capsys, "evaluate", pred, gt, *flag)
    assert str(gt / "a.nii.gz") in line and "found [" in line and advice in line


def test_evaluate_points_to_to_brats_labels_when_predictions_and_references_differ(tmp_path, capsys):
    pred, gt = label_folders(tmp_path, cases=("a",), values=(0, 1, 2, 4))
    write_image(np.array([[[0, 1, 2, 3]]], np.uint8).repeat(5, 0), pred / "a.nii.gz")
    write_image(np.array([[[0, 1, 2, 4]]], np.uint8).repeat(5, 0), gt / "a.nii.gz")
    line = user_error(capsys, "evaluate", pred, gt, "--brats-labels")
    assert str(pred / "a.nii.gz") in line and "to-brats-labels" in line


@pytest.mark.parametrize("geometry, what", [(dict(spacing=(1.0, 1.0, 3.0)), "spacing"),
                                            (dict(origin=(0.0, 2.0, 0.0)), "origin"),
                                            (dict(direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)), "direction")])
def test_evaluate_refuses_a_prediction_on_another_voxel_grid(tmp_path, capsys, geometry, what):
    pred, gt = label_folders(tmp_path)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(gt / "c.nii.gz")))
    write_image(labels, pred / "c.nii.gz", **geometry)
    line = user_error(capsys, "evaluate", pred, gt)
    assert str(pred / "c.nii.gz") in line and str(gt / "c.nii.gz") in line and what in line


def test_evaluate_refuses_another_shape(tmp_path, capsys):
    pred, gt = label_folders(tmp_path)
    write_image(np.zeros((5, 6, 8), np.uint8), pred / "c.nii.gz")
    assert "size" in user_error(capsys, "evaluate", pred, gt)


def test_evaluate_accepts_geometry_that_differs_by_header_rounding(tmp_path, capsys):
    pred, gt = label_folders(tmp_path, cases=("a",))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(gt / "a.nii.gz")))
    write_image(labels, pred / "a.nii.gz", spacing=(1.0, 1.0, 1.0 + 1e-6), origin=(1e-6, 0.0, 0.0))
    assert "| mean | 1.0000 |" in succeeds(capsys, "evaluate", pred, gt)[0]


def test_evaluate_checks_every_case_before_computing_any(tmp_path, capsys, monkeypatch):
    computed = []
    monkeypatch.setattr(evaluation, "case_metrics", lambda *args: computed.append(args))
    pred, gt = label_folders(tmp_path)
    write_image(np.full((5, 6, 7), 9, np.uint8), pred / "d.nii.gz")  # the last case
    assert str(pred / "d.nii.gz") in user_error(capsys, "evaluate", pred, gt)
    assert computed == []


def test_evaluate_refuses_missing_empty_and_unmatched_folders(tmp_path, capsys):
    pred, gt = label_folders(tmp_path)
    (tmp_path / "empty").mkdir()
    assert "no such folder" in user_error(capsys, "evaluate", tmp_path / "nowhere", gt)
    assert "no such folder" in user_error(capsys, "evaluate", pred, tmp_path / "nowhere")
    assert "not a folder" in user_error(capsys, "evaluate", pred / "a.nii.gz", gt)
    assert "no predictions" in user_error(capsys, "evaluate", tmp_path / "empty", gt)
    assert "no reference segmentations" in user_error(capsys, "evaluate", pred, tmp_path / "empty")
    assert "both the prediction and the reference" in user_error(capsys, "evaluate", pred, pred)
    write_image(np.zeros((5, 6, 7), np.uint8), pred / "e.nii.gz")
    line = user_error(capsys, "evaluate", pred, gt)
    assert "have no reference" in line and "e.nii.gz" in line
    os.remove(pred / "e.nii.gz")
    os.remove(pred / "a.nii.gz")
    assert "no prediction for a.nii.gz" in user_error(capsys, "evaluate", pred, gt)


def test_evaluate_never_writes_results_over_or_into_what_is_not_ours(tmp_path, capsys):
    pred, gt = label_folders(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    refused = {str(tmp_path / "folder"): "is a folder",
               str(pred / "metrics.json"): "into the prediction folder",
               str(gt / "metrics.json"): "into the reference folder",
               str(gt / "a.nii.gz"): "into the reference folder",  # an input file
               str(tmp_path / "afile" / "metrics.json"): "is a file, not a folder"}
    for output, message in refused.items():
        for overwrite in ([], ["--overwrite"]):
            assert message in user_error(capsys, "evaluate", pred, gt, "-o", output, *overwrite)
    os.remove(tmp_path / "afile")
    os.rmdir(tmp_path / "folder")
    assert tree_hash(tmp_path) == before

    output = tmp_path / "results" / "metrics.json"
    succeeds(capsys, "evaluate", pred, gt, "-o", output)
    assert sorted(os.listdir(output.parent)) == ["metrics.csv", "metrics.json", "metrics.md"]
    assert "already exists" in user_error(capsys, "evaluate", pred, gt, "-o", output)
    os.remove(output)  # the CSV beside it is protected as well
    assert "metrics.csv already exists" in user_error(capsys, "evaluate", pred, gt, "-o", output)
    succeeds(capsys, "evaluate", pred, gt, "-o", output, "--overwrite")
    assert output.exists()


# ----------------------------------------------------------------------------------------------- to-brats-labels

def test_to_brats_labels_refuses_overlapping_missing_and_empty_folders(tmp_path, capsys):
    pred, _ = label_folders(tmp_path)
    before = tree_hash(tmp_path)
    for output, overwrite in ((pred, []), (pred / "brats", []), (tmp_path, ["--overwrite"])):
        assert "overlap" in user_error(capsys, "to-brats-labels", pred, output, *overwrite)
    assert tree_hash(tmp_path) == before and not (pred / "brats").exists()
    assert "no such folder" in user_error(capsys, "to-brats-labels", tmp_path / "nowhere", tmp_path / "out")
    assert "not a folder" in user_error(capsys, "to-brats-labels", pred / "a.nii.gz", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert "no predictions" in user_error(capsys, "to-brats-labels", tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_to_brats_labels_replaces_an_earlier_output_only_with_overwrite_and_whole(tmp_path, capsys):
    pred, _ = label_folders(tmp_path)
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    succeeds(capsys, "to-brats-labels", pred, out)
    assert sorted(os.listdir(out)) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]
    write_image(np.zeros((2, 2, 2), np.uint8), out / "old.nii.gz")
    assert "--overwrite" in user_error(capsys, "to-brats-labels", pred, out)
    succeeds(capsys, "to-brats-labels", pred, out, "--overwrite")
    assert sorted(os.listdir(out)) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]  # old.nii.gz gone
    assert sorted(os.listdir(tmp_path)) == ["gt", "out", "pred"]


def test_to_brats_labels_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    pred, _ = label_folders(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    (tmp_path / "afile").write_text("x")
    assert "not even with --overwrite" in user_error(capsys, "to-brats-labels", pred, tmp_path / "notes",
                                                     "--overwrite")
    assert "not a folder" in user_error(capsys, "to-brats-labels", pred, tmp_path / "afile", "--overwrite")
    assert os.listdir(tmp_path / "notes") == ["thesis.tex"] and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("bad, message", [(np.full((5, 6, 7), 4, np.uint8), "they look like BraTS labels"),
                                          (np.full((5, 6, 7), 1.5, np.float32), "non-integer values")])
def test_to_brats_labels_checks_every_file_before_writing(tmp_path, capsys, bad, message):
    pred, _ = label_folders(tmp_path)
    write_image(bad, pred / "d.nii.gz")  # the 4th file
    line = user_error(capsys, "to-brats-labels", pred, tmp_path / "out")
    assert str(pred / "d.nii.gz") in line and message in line
    assert sorted(os.listdir(tmp_path)) == ["gt", "pred"]


def test_to_brats_labels_failing_on_the_4th_file_leaves_the_old_output_untouched(tmp_path, monkeypatch):
    pred, _ = label_folders(tmp_path)
    convert_predictions_to_brats(str(pred), str(tmp_path / "out"))
    before = tree_hash(tmp_path / "out")
    real_write = sitk.WriteImage
    written = []

    def failing_write(image, path):
        if len(written) == 3:
            raise OSError("No space left on device")
        written.append(path)
        real_write(image, path)

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(OSError):
        convert_predictions_to_brats(str(pred), str(tmp_path / "out"), overwrite=True)
    assert tree_hash(tmp_path / "out") == before and sorted(os.listdir(tmp_path)) == ["gt", "out", "pred"]


@pytest.fixture
def ctrl_c():
    """SIGINT as an interactive shell delivers it (Python's KeyboardInterrupt handler): a shell running the tests as a
    background job would otherwise leave SIGINT ignored, and a simulated Ctrl-C would do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_to_brats_labels_leaves_no_output(tmp_path, capsys, monkeypatch, signum, ctrl_c):
    pred, _ = label_folders(tmp_path)
    convert = brats._convert_label_file
    calls = []

    def interrupted_on_the_3rd_file(*args):
        calls.append(args)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)  # as Ctrl-C or `kill` would
        convert(*args)

    monkeypatch.setattr(brats, "_convert_label_file", interrupted_on_the_3rd_file)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["to-brats-labels", str(pred), str(tmp_path / "out")]) == 128 + signum
    assert "interrupted" in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["gt", "pred"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back


def test_to_brats_labels_removes_the_leftover_of_a_killed_run(tmp_path, capsys):
    pred, _ = label_folders(tmp_path)
    leftover = partial_path(str(tmp_path / "out"))
    os.makedirs(leftover)
    assert "left over from an interrupted run" in succeeds(capsys, "to-brats-labels", pred, tmp_path / "out")[1]
    assert sorted(os.listdir(tmp_path)) == ["gt", "out", "pred"]


# -------------------------------------------------------------------------------------------------- make-phantom

@pytest.mark.parametrize("args, message", [(["--cases", "0"], "--cases"), (["--cases", "-2"], "--cases"),
                                           (["--seed", "-1"], "--seed"), (["--spacing", "0"], "--spacing"),
                                           (["--spacing", "-1"], "--spacing"), (["--spacing", "nan"], "--spacing"),
                                           (["--spacing", "inf"], "--spacing"), (["--spacing", "100"], "--spacing"),
                                           (["--variation", "3"], "--variation")])
def test_make_phantom_refuses_bad_arguments_before_writing(tmp_path, capsys, args, message):
    arguments = {"--cases": "2", **dict(zip(args[::2], args[1::2]))}
    line = user_error(capsys, "make-phantom", tmp_path / "phantom", *[x for kv in arguments.items() for x in kv])
    assert message in line
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tiny_anatomy(monkeypatch):
    """A 12^3 ball instead of the MNI152 template: the folder handling is under test, not the anatomy."""
    def load_anatomy(spacing):
        grid = np.indices((12, 12, 12)) - 5.5
        brain = np.sqrt((grid ** 2).sum(0)) < 5.5
        half = brain * 0.5
        return {"brain": brain, "wm": brain * 1.0, "gm": half, "csf": half, "t1": half}
    monkeypatch.setattr(phantom, "load_anatomy", load_anatomy)


def fake_phantom(folder, case="BraTS19_PHANTOM_000"):
    os.makedirs(os.path.join(folder, "HGG", case))
    open(os.path.join(folder, "HGG", case, f"{case}_t1.nii.gz"), "w").close()


def test_make_phantom_replaces_an_earlier_phantom_only_with_overwrite(tmp_path, capsys, tiny_anatomy):
    target = tmp_path / "phantom"
    fake_phantom(target, "BraTS19_PHANTOM_009")
    before = tree_hash(target)
    assert "--overwrite" in user_error(capsys, "make-phantom", target, "--cases", "2", "--spacing", "8")
    assert tree_hash(target) == before
    succeeds(capsys, "make-phantom", target, "--cases", "2", "--spacing", "8", "--overwrite")
    assert sorted(os.listdir(target / "HGG")) == ["BraTS19_PHANTOM_000", "BraTS19_PHANTOM_001"]  # 009 gone
    assert sorted(os.listdir(tmp_path)) == ["phantom"]


def test_make_phantom_never_writes_into_a_folder_it_did_not_write(tmp_path, capsys, tiny_anatomy):
    make_brats_folder(str(tmp_path / "brats"), hgg=1, lgg=0)
    before = tree_hash(tmp_path / "brats")
    assert "not even with --overwrite" in user_error(capsys, "make-phantom", tmp_path / "brats", "--cases", "1",
                                                     "--spacing", "8", "--overwrite")
    assert tree_hash(tmp_path / "brats") == before


def test_interrupted_make_phantom_leaves_no_folder(tmp_path, capsys, monkeypatch, tiny_anatomy):
    synthesise = phantom.synthesise_case
    calls = []

    def interrupted_on_the_2nd_case(*args):
        calls.append(args)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return synthesise(*args)

    monkeypatch.setattr(phantom, "synthesise_case", interrupted_on_the_2nd_case)
    assert main(["make-phantom", str(tmp_path / "phantom"), "--cases", "3", "--spacing", "8"]) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------- convert-brats2019

@pytest.fixture
def brats_source(tmp_path, monkeypatch):
    make_brats_folder(str(tmp_path / "brats"), hgg=8, lgg=0)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    return tmp_path / "brats"


@pytest.mark.parametrize("args, message", [
    (["--test-fraction", "0.99"], "leaves no training case"),
    (["--test-fraction", "0.05"], "gives no test case"),
    (["--test-fraction", "1"], "--test-fraction must be"),
    (["--test-fraction", "-0.2"], "--test-fraction must be"),
    (["--test-fraction", "nan"], "--test-fraction must be"),
    (["--labeled-fraction", "0"], "--labeled-fraction must be"),
    (["--labeled-fraction", "1.5"], "--labeled-fraction must be"),
    (["--labeled-fraction", "nan"], "--labeled-fraction must be"),
    (["--test-fraction", "0.25", "--labeled-fraction", "0.95"], "leaves no unlabeled case"),
    (["--seed", "-1"], "--seed must be"),
])
def test_convert_refuses_arguments_no_usable_split_comes_from(tmp_path, capsys, brats_source, args, message):
    assert message in user_error(capsys, "convert-brats2019", brats_source, "--dataset-id", 85, *args)
    assert not (tmp_path / "raw").exists() or os.listdir(tmp_path / "raw") == []


def test_convert_temporary_never_looks_like_an_nnunet_dataset(tmp_path, capsys, brats_source, monkeypatch):
    seen = []

    def interrupted(case, folder):
        seen.extend(os.listdir(tmp_path / "raw"))
        raise KeyboardInterrupt

    monkeypatch.setattr(brats, "check_case", interrupted)
    assert main(["convert-brats2019", str(brats_source), "--dataset-id", "86"]) == 128 + signal.SIGINT
    assert seen == [".partial-Dataset086_BraTS2019"]  # nnU-Net finds datasets by the DatasetNNN_ prefix
    assert os.listdir(tmp_path / "raw") == []


def test_sigterm_during_convert_leaves_the_old_dataset(tmp_path, capsys, brats_source, monkeypatch):
    succeeds(capsys, "convert-brats2019", brats_source, "--dataset-id", "87")
    target = tmp_path / "raw" / "Dataset087_BraTS2019"
    before = tree_hash(target)
    check = brats.check_case
    monkeypatch.setattr(brats, "check_case", lambda *args: (check(*args), os.kill(os.getpid(), signal.SIGTERM)))
    assert main(["convert-brats2019", str(brats_source), "--dataset-id", "87", "--seed", "3",
                 "--overwrite"]) == 128 + signal.SIGTERM
    assert tree_hash(target) == before and os.listdir(tmp_path / "raw") == ["Dataset087_BraTS2019"]


def test_convert_overwrite_replaces_the_dataset_whole_and_clears_leftovers(tmp_path, capsys, brats_source):
    target = tmp_path / "raw" / "Dataset088_BraTS2019"
    os.makedirs(target / "imagesTr")
    (target / "imagesTr" / "stale_0000.nii.gz").write_text("")
    for leftover in (".partial-Dataset088_BraTS2019", "Dataset088_BraTS2019.partial"):  # this and earlier versions
        os.makedirs(tmp_path / "raw" / leftover)
    err = succeeds(capsys, "convert-brats2019", brats_source, "--dataset-id", "88", "--overwrite")[1]
    assert err.count("left over from an interrupted run") == 2
    assert os.listdir(tmp_path / "raw") == ["Dataset088_BraTS2019"]
    assert "stale_0000.nii.gz" not in os.listdir(target / "imagesTr")
    assert len(os.listdir(target / "imagesTs")) == 4 * round(0.2 * 8)


def test_convert_never_writes_into_its_source(tmp_path, capsys, brats_source, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(brats_source))
    before = tree_hash(brats_source)
    assert "overlap" in user_error(capsys, "convert-brats2019", brats_source, "--dataset-id", 89)
    assert tree_hash(brats_source) == before


def test_split_fractions_that_round_to_nothing_are_refused():
    cases = [f"c{i}" for i in range(8)]
    assert len(brats.split_cases(cases, 0.0, None, 0)["test"]) == 0  # 0: no test split, asked for explicitly
    assert len(brats.split_cases(cases, 0.1, None, 0)["test"]) == 1
    with pytest.raises(BratsConversionError, match="no test case"):
        brats.split_cases(cases, 0.01, None, 0)
    with pytest.raises(BratsConversionError, match="--test-fraction must be"):
        brats.split_cases(cases, math.nan, None, 0)  # NaN fails every range comparison


# ------------------------------------------------------------------------------------------ preprocess-unlabeled

def test_preprocess_unlabeled_refuses_bad_arguments_before_reading_anything(tmp_path, capsys, monkeypatch):
    for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    assert "-np must be at least 1, got 0" in user_error(capsys, "preprocess-unlabeled", "-d", 1, "-c", "3d_fullres",
                                                          "-np", 0)
    assert "-d 777: Could not find a dataset with the ID 777" in user_error(capsys, "preprocess-unlabeled", "-d", 777,
                                                                             "-c", "3d_fullres")
    monkeypatch.delenv("nnUNet_preprocessed")
    assert "nnUNet_preprocessed is not set" in user_error(capsys, "preprocess-unlabeled", "-d", 1, "-c", "3d_fullres")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def dataset_copy(workspace, tmp_path, monkeypatch):
    """A private copy of the session's planned and preprocessed dataset (the shared one is never changed)."""
    from .nnunet_workspace import private_copy
    return private_copy(workspace, str(tmp_path / "ws"), monkeypatch)


def _dataset_folders(ws):
    from .nnunet_workspace import DATASET_NAME
    return os.path.join(ws.raw, DATASET_NAME), os.path.join(ws.preprocessed, DATASET_NAME)


@pytest.mark.parametrize("args, message", [
    (["-c", "3d_lowres_x"], "-c 3d_lowres_x: "),
    (["-c", "2d"], "-c 2d: the labeled cases were not preprocessed for it"),
    (["-c", "3d_fullres", "-p", "OtherPlans"], "OtherPlans.json not found"),
    (["-c", "3d_fullres"], "already holds preprocessed unlabeled cases"),
])
def test_preprocess_unlabeled_refuses_configurations_and_outputs_before_writing(dataset_copy, capsys, args, message):
    raw, pre = _dataset_folders(dataset_copy)
    before = tree_hash(pre)
    assert message in user_error(capsys, "preprocess-unlabeled", "-d", 501, "-np", 1, *args)
    assert tree_hash(pre) == before


@pytest.mark.parametrize("damage, message", [(shutil.rmtree, "imagesUnlabeled does not exist"),
                                             (lambda f: [os.remove(os.path.join(f, n)) for n in os.listdir(f)],
                                              "holds no unlabeled images")])
def test_preprocess_unlabeled_refuses_a_missing_or_empty_unlabeled_folder(dataset_copy, capsys, damage, message):
    raw, pre = _dataset_folders(dataset_copy)
    damage(os.path.join(raw, "imagesUnlabeled"))
    before = tree_hash(pre)
    assert message in user_error(capsys, "preprocess-unlabeled", "-d", 501, "-c", "3d_fullres", "--overwrite")
    assert tree_hash(pre) == before


def test_preprocess_unlabeled_never_replaces_a_folder_holding_other_files(dataset_copy, capsys):
    raw, pre = _dataset_folders(dataset_copy)
    with open(os.path.join(pre, "nnUNetPlans_3d_fullres_unlabeled", "notes.txt"), "w") as f:
        f.write("mine")
    before = tree_hash(pre)
    assert "not even with --overwrite" in user_error(capsys, "preprocess-unlabeled", "-d", 501, "-c", "3d_fullres",
                                                     "--overwrite")
    assert tree_hash(pre) == before


def test_preprocess_unlabeled_replaces_its_output_whole_and_clears_leftovers(dataset_copy, capsys):
    from nnunet_mem_cif.ssl.unlabeled_data import load_unlabeled_dataset
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    raw, pre = _dataset_folders(dataset_copy)
    output = os.path.join(pre, "nnUNetPlans_3d_fullres_unlabeled")
    for name in os.listdir(os.path.join(raw, "imagesUnlabeled")):
        if name.startswith("unl_002"):
            os.remove(os.path.join(raw, "imagesUnlabeled", name))
    os.remove(output + ".json")  # as if killed between the folder's swap and the manifest: an unfinished output
    os.makedirs(partial_path(output))
    err = succeeds(capsys, "preprocess-unlabeled", "-d", 501, "-c", "3d_fullres", "-np", 1)[1]
    assert err.count("left over from an interrupted run") == 2
    assert not os.path.exists(partial_path(output))
    dataset = load_unlabeled_dataset(pre, PlansManager(os.path.join(pre, "nnUNetPlans.json")), "3d_fullres")
    assert sorted(dataset.identifiers) == ["unl_000", "unl_001"]  # unl_002 gone: replaced whole, not mixed


def test_interrupted_preprocess_unlabeled_keeps_the_previous_result(dataset_copy, capsys, monkeypatch):
    import nnunet_mem_cif.ssl.unlabeled_data as unlabeled_data
    raw, pre = _dataset_folders(dataset_copy)
    before = tree_hash(pre)
    preprocess_one = unlabeled_data._preprocess_one
    calls = []

    def interrupted_on_the_2nd_case(task):
        calls.append(task)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return preprocess_one(task)

    monkeypatch.setattr(unlabeled_data, "_preprocess_one", interrupted_on_the_2nd_case)
    assert main(["preprocess-unlabeled", "-d", "501", "-c", "3d_fullres", "-np", "1", "--overwrite"]) == \
        128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "nnunet-mem-cif: interrupted (SIGTERM)"
    assert tree_hash(pre) == before and not any(n.startswith(".partial-") for n in os.listdir(pre))


# ------------------------------------------------------------------------------------------------------ table

@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--iterations", "0"], "--iterations must be at least 1"),
    (["--seeds", "-1"], "--seeds must lie between 0 and 2**32 - 1"),
    (["--seeds", "1", "2", "1"], "--seeds: 1 given more than once"),
    (["--fractions", "0"], "fractions must lie in (0, 1]"),
    (["--fractions", "1.5"], "fractions must lie in (0, 1]"),
    (["--fractions", "nan"], "fractions must lie in (0, 1]"),
    (["--fractions", "0.1", "0.1"], "--fractions: 0.1 given more than once"),
    (["--methods", "memcif", "fixmatch"], "unknown method(s) fixmatch"),
    (["--fold", "all"], "--fold all is not supported"),
    (["--fold", "first"], "--fold must be a fold number"),
])
def test_table_refuses_bad_arguments_before_creating_anything(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in user_error(capsys, "table", "--dataset-id", 501, "--output-dir", tmp_path / "out",
                                 "--device", "cpu", *args)
    assert os.listdir(tmp_path) == []


def test_table_report_only_needs_an_earlier_table(tmp_path, capsys):
    assert "holds no table runs" in user_error(capsys, "table", "--dataset-id", 501, "--report-only",
                                                   "--output-dir", tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_table_refuses_folds_the_dataset_cannot_have_and_fractions_without_unlabeled_cases(dataset_copy, capsys,
                                                                                               tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import save_json
    raw, pre = _dataset_folders(dataset_copy)
    out = tmp_path / "out"
    common = ("table", "--dataset-id", 501, "--output-dir", out, "--device", "cpu")
    if os.path.exists(os.path.join(pre, "splits_final.json")):
        os.remove(os.path.join(pre, "splits_final.json"))
    assert "nnU-Net's 5-fold split has folds 0..4" in user_error(capsys, *common, "--fold", 5)
    assert "nnU-Net's 5-fold split has folds 0..4" in user_error(capsys, *common, "--fold", -1)
    line = user_error(capsys, *common, "--fractions", 1)
    assert "keeps all 4 training cases of fold 0 labeled" in line and "memcif" in line
    save_json([{"train": ["lab_000", "lab_001"], "val": ["lab_002"]}] * 2, os.path.join(pre, "splits_final.json"))
    assert "splits_final.json defines folds 0..1" in user_error(capsys, *common, "--fold", 2)
    assert not out.exists()


def test_table_refuses_output_folders_that_are_not_its_own(dataset_copy, capsys, tmp_path):
    raw, pre = _dataset_folders(dataset_copy)
    before = (tree_hash(raw), tree_hash(pre))
    common = ("table", "--dataset-id", 501, "--device", "cpu", "--output-dir")
    for inside in (raw, os.path.join(raw, "bench"), os.path.join(pre, "bench"), dataset_copy.raw):
        assert "overlap; the dataset is only read" in user_error(capsys, *common, inside)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("x")
    assert "holds files this command did not write" in user_error(capsys, *common, tmp_path / "thesis")
    assert (tree_hash(raw), tree_hash(pre)) == before


# ----------------------------------------------------------------------------------------------------------- demo

@pytest.mark.parametrize("args, message", [
    (["--cases", "2"], "--cases 2 is too few"), (["--cases", "0"], "--cases must be at least 1"),
    (["--spacing", "nan"], "--spacing must be"), (["--spacing", "0"], "--spacing must be"),
    (["--seed", "-1"], "--seed must be"), (["--seed", str(2 ** 32)], "--seed must be between 0 and 2**32 - 1"),
])
def test_demo_refuses_bad_arguments_before_making_anything(tmp_path, capsys, args, message):
    assert message in user_error(capsys, "demo", "--workdir", tmp_path / "demo", "--device", "cpu", *args)
    assert os.listdir(tmp_path) == []


def test_demo_never_writes_into_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):
        assert "not even with --overwrite" in user_error(capsys, "demo", "--workdir", tmp_path / "home",
                                                         "--device", "cpu", *overwrite)
    assert os.listdir(tmp_path / "home") == ["notes.txt"]


def test_demo_replaces_a_finished_demo_only_with_overwrite_and_an_unfinished_one_always(tmp_path):
    from nnunet_mem_cif.demo import DEMO_MARKER, prepare_workdir
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "logs").mkdir()
    (workdir / DEMO_MARKER).write_text('{"complete": true}')
    with pytest.raises(OutputFolderError, match="--overwrite"):
        prepare_workdir(str(workdir), overwrite=False)
    assert prepare_workdir(str(workdir), overwrite=True) == "replace"
    (workdir / DEMO_MARKER).write_text('{"complete": false}')  # interrupted, or a step failed
    assert prepare_workdir(str(workdir), overwrite=False) == "leftover"
    assert prepare_workdir(str(tmp_path / "new"), overwrite=False) is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended, only not been reaped
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupting_the_demo_ends_the_nnunet_processes_it_started(tmp_path, capsys, monkeypatch, signum, ctrl_c):
    """A step's command and the processes it started (as nnU-Net's augmentation workers) end with the demo."""
    import sys
    import threading
    import time
    import nnunet_mem_cif.demo as demo
    pids = tmp_path / "pids"
    script = ("import subprocess, sys, time; worker = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(f'{__import__(\"os\").getpid()} "
              "{worker.pid}'); print('training', flush=True); time.sleep(120)")

    def fake_steps(workdir, *args, **kwargs):  # instead of the phantom, conversion and nnU-Net's planning
        demo.run_step("nnUNetv2_plan_and_preprocess", [sys.executable, "-c", script, str(pids)], dict(os.environ),
                      os.path.join(workdir, "logs", "plan_and_preprocess.log"))

    def interrupt_once_started():
        while not pids.exists() or not pids.read_text().strip():
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(demo, "prepare_phantom_dataset", fake_steps)
    threading.Thread(target=interrupt_once_started, daemon=True).start()
    start = time.time()
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--device", "cpu"]) == 128 + signum
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"nnunet-mem-cif: interrupted ({signum.name})"
    assert time.time() - start < 60
    step, worker = map(int, pids.read_text().split())
    deadline = time.time() + 5
    while (_alive(step) or _alive(worker)) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(step) and not _alive(worker)
    assert demo.prepare_workdir(str(tmp_path / "demo"), overwrite=False) == "leftover"  # the next run clears it


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"))
    make_brats_folder(str(tmp_path / "brats"), hgg=1, lgg=0)
    os.makedirs(tmp_path / "raw" / "Dataset079_BraTS2019")
    runs = {
        "already exists": ["convert-brats2019", str(tmp_path / "brats"), "--dataset-id", "79"],
        "does not exist": ["convert-brats2019", str(tmp_path / "nowhere"), "--dataset-id", "80"],
        "no reference segmentations": ["evaluate", str(tmp_path), str(tmp_path / "raw")],
    }
    without_raw = {k: v for k, v in env.items() if k != "nnUNet_raw"}
    for message, args in runs.items():
        result = subprocess.run([console_script("nnunet-mem-cif"), *args], env=env, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([console_script("nnunet-mem-cif"), "convert-brats2019", str(tmp_path / "brats"),
                             "--dataset-id", "84"], env=without_raw, capture_output=True, text=True)
    assert result.returncode == 2 and "nnUNet_raw is not set" in result.stderr
