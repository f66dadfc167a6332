"""experiments/compare_unseen.py: the first table's paired differences beside the unseen phase's, each the same
number as that phase's own results.md reports (so docs/results.md can quote either)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "compare_unseen.py"


def results_md_cell(results_md: Path, fraction: str, comparison: str) -> str:
    """The 'mean over WT/TC/ET' cell of a results.md's paired-differences row, in the script's minus signs."""
    for line in results_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] == fraction and cells[1] == comparison:
            return cells[3].replace("-", "−")
    raise AssertionError(f"no row {fraction} {comparison} in {results_md}")


def test_side_by_side_matches_each_phase_report():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in out.splitlines()[2:])}
    assert len(rows) == 18  # the table's 15 comparisons with runs in these phases, and PAIRS' 3
    first_1, unseen_1, first_5, unseen_5 = rows["full method − supervised nnU-Net"]
    table = ROOT / "experiments" / "evidence_table"
    assert first_1 == results_md_cell(table / "results.md", "1%", "full method - supervised nnU-Net")
    assert unseen_5 == results_md_cell(table / "unseen" / "results.md", "5%", "full method - supervised nnU-Net")
    assert all(re.fullmatch(r"[+−]\d\.\d{3} \[[+−]\d\.\d{3}, [+−]\d\.\d{3}\]( \(\d+ pairs\))?", c)
               for cells in rows.values() for c in cells)
