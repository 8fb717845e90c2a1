"""`python -m fourm.train`, the launchers' entry: `fourm train`'s arguments and one-line report of bad input."""

import subprocess
import sys


def test_python_m_fourm_train_reports_bad_input_as_fourm_train_does(tmp_path):
    missing = tmp_path / "none.yaml"
    proc = subprocess.run([sys.executable, "-m", "fourm.train", "--config", str(missing)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("fourm train: error: ") and str(missing) in proc.stderr
