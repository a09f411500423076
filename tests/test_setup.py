"""Set-up files agree with each other: pyproject, environment.yml, Makefile, .ci/run, README."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[\[=<>!~ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins_env = {_name(r): r.strip() for r in pip_section if not r.startswith("-")}
    pins_py = {_name(r): r.strip() for r in deps}
    assert pins_env.keys() == pins_py.keys()
    assert pins_env == pins_py, "environment.yml and pyproject.toml pin different versions"
    assert "-e ." in pip_section, "environment.yml must install this project"
    assert any(str(d).startswith("python") for d in env["dependencies"])


def test_every_dependency_is_pinned_and_installed():
    from importlib.metadata import version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for req in deps:
        name, pinned = _name(req), req.split("==")[1]
        assert "==" in req, f"{req} is not pinned"
        assert version(name).split("+")[0] == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme.split("\n## ")[0], "the README must open with the test command"
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"


def test_cli_help_reads_well():
    out = subprocess.run([sys.executable, "-m", "ltnb.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("data", "batch", "report"):
        assert cmd in out
    out = subprocess.run([sys.executable, "-m", "ltnb.cli", "data", "--help"], capture_output=True, text=True, check=True).stdout
    assert "fetch" in out and "build" in out
