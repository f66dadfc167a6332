"""experiments/evidence_table.sh's arguments: a phase, row, variation or fraction it does not know is refused with
one clear error, before any data work (the phases train for hours)."""
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "evidence_table.sh"


def test_unknown_arguments_are_refused_before_any_data_work(tmp_path):
    workdir = tmp_path / "work"
    for arguments, message in ((["retrain-nnunet-all", "2"], "PHASE must be"),  # all labels: no 1 % run
                               (["retrain-foo", "2"], "got retrain-foo"),
                               (["schedule45", "3"], "VARIATION must be 1 or 2"),
                               (["retrain", "2", "0.05"], "FRACTION is the schedule45 phase's"),
                               (["schedule45", "2", "0.01", "3,4"], "SEEDS is the schedule45 phase's"),
                               (["retrain", "2", "0.01", "3"], "SEEDS is the schedule45 phase's")):
        result = subprocess.run(["bash", str(SCRIPT), str(workdir), *arguments], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, (arguments, result.stderr)
    assert not workdir.exists()
