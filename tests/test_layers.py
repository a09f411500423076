"""The package's layers hold (import-linter, the contracts in pyproject.toml), and analysis starts
without torch."""
import subprocess
import sys

from conftest import ROOT


def test_import_linter_contracts_are_kept():
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "lint-imports") if (ROOT / ".venv" / "bin" / "lint-imports").exists()
                        else "lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken." in r.stdout


def test_analysis_modules_do_not_import_torch():
    code = ("import sys, ltnb.analysis.report, ltnb.analysis.explore, ltnb.analysis.phase, ltnb.analysis.findings, ltnb.analysis.results, ltnb.analysis.plots; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
