"""Shared fixtures: an nnU-Net workspace with tiny generated data, planned and preprocessed by the real CLI."""
import os

import pytest

import nnunet_mem_cif

TESTS = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(os.path.abspath(nnunet_mem_cif.__file__)) == os.path.join(os.path.dirname(TESTS),
                                                                              "nnunet_mem_cif"):
    raise RuntimeError("The tests import nnunet_mem_cif from the source tree, but nnU-Net's commands in them use the "
                       "installed package. Install it (pip install '.[test]') and run the tests with the 'pytest' "
                       "command, not 'python -m pytest' from the repository root.")

from .nnunet_workspace import DATASET_ID, Workspace  # noqa: E402
from .synthetic_data import write_dataset  # noqa: E402


def pytest_collection_modifyitems(items):
    """A test that needs the planned workspace runs nnU-Net's planning: it belongs to the e2e tier, so that
    ``pytest -m "not e2e"`` stays a fast tier without nnU-Net's commands."""
    for item in items:
        if "workspace" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """Raw data written, ``nnUNetv2_plan_and_preprocess`` and ``preprocess-unlabeled`` run (about 45 s on 2 cores)."""
    ws = Workspace(str(tmp_path_factory.mktemp("nnunet")))
    write_dataset(ws.raw, DATASET_ID)
    ws.run("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1")
    ws.run("nnunet-mem-cif", "preprocess-unlabeled", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1")
    return ws
