"""write_atomically: the file under its real name is always the old one or the complete new one."""
import os

import pytest

from nnunet_mem_cif.atomic import partial_path, write_atomically, write_text_atomically


def test_replaces_the_file_only_when_the_write_completed(tmp_path):
    path = str(tmp_path / "results.csv")
    write_text_atomically(path, lambda f: f.write("old\n"))

    def crashing_write(handle):
        handle.write("half of the new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        write_text_atomically(path, crashing_write)
    assert open(path).read() == "old\n"
    assert os.listdir(tmp_path) == ["results.csv"]  # no temporary left behind

    write_text_atomically(path, lambda f: f.write("new\n"))
    assert open(path).read() == "new\n"
    assert os.listdir(tmp_path) == ["results.csv"]


def test_the_temporary_keeps_the_extension_writers_choose_the_format_by(tmp_path):
    seen = []
    write_atomically(str(tmp_path / "case_0000.nii.gz"),
                     lambda partial: (seen.append(partial), open(partial, "w").close()))
    assert seen == [partial_path(str(tmp_path / "case_0000.nii.gz"))]
    assert seen[0].endswith(".nii.gz") and os.path.dirname(seen[0]) == str(tmp_path)
    assert os.listdir(tmp_path) == ["case_0000.nii.gz"]
