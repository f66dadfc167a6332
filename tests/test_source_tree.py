"""The package imports from a clone's root as it does installed (architectures/ and trainers/ sit at the top)."""
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_package_imports_from_the_clone_root_as_installed():
    script = ("import nnunet_mem_cif, nnunet_mem_cif.architectures as a, nnunet_mem_cif.trainers as t; "
              "print(nnunet_mem_cif.__file__); print(a.MemCifUNet.__name__, t.MemCifSemiTrainer.__name__)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    source, classes = result.stdout.split("\n")[:2]
    assert source == os.path.join(REPOSITORY, "nnunet_mem_cif", "__init__.py")  # the clone's, not the installed one
    assert classes == "MemCifUNet MemCifSemiTrainer"
