"""The distribution: the wheel ships the rl-zoo3 hyperparameter files, and CI runs the README's test command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import sb3_pg_ext

ROOT = Path(__file__).resolve().parents[1]


def test_hyperparams_folder_is_reachable_from_the_package():
    files = sorted(p.name for p in sb3_pg_ext.HYPERPARAMS_DIR.glob("*.yml"))
    assert "reinforce.yml" in files
    config = yaml.safe_load((sb3_pg_ext.HYPERPARAMS_DIR / "reinforce.yml").read_text())
    assert config["CartPole-v1"]["policy"] == "MlpPolicy"


def test_built_wheel_contains_hyperparams(tmp_path):
    # Build from a copy of the sources: setuptools writes build/ and *.egg-info next to the project it builds, and
    # a test must leave the checkout as it found it.
    existed_before = {name for name in ("build", "dist") if (ROOT / name).exists()}
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "logs"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{result.stdout}\n{result.stderr}")
    wheel = next((tmp_path / "wheel").glob("sb3_pg_ext-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("sb3_pg_ext/hyperparams/")}
    expected = {p.name for p in (ROOT / "hyperparams").glob("*.yml")}
    assert expected and expected <= shipped, f"missing from the wheel: {expected - shipped}"
    # the benchmark's defaults files (the final-policies preset's conf files)
    defaults = {p.name for p in (ROOT / "sb3_pg_ext" / "benchmark" / "defaults").glob("*.yml")}
    shipped_defaults = {Path(n).name for n in names if n.startswith("sb3_pg_ext/benchmark/defaults/")}
    assert defaults and defaults <= shipped_defaults, f"missing from the wheel: {defaults - shipped_defaults}"
    assert "sb3_pg_ext/benchmark/branch/grpo.yml" in names, "the protocol-grpo-branch preset's conf file"
    written = {name for name in ("build", "dist") if (ROOT / name).exists()} - existed_before
    assert not written, f"building the wheel wrote {sorted(written)} into the checkout"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"(python -m pytest[^\n`]*)", readme)
    assert commands, "the README names no test command"
    readme_command = commands[0].strip()
    assert readme_command in ci.splitlines(), f"{readme_command!r} is not a line of .ci/run"
    assert "pip install torch==2.13.0" in readme and "torch==2.13.0" in ci


def test_hyperparameter_files_cite_only_files_that_exist():
    for path in (ROOT / "hyperparams").glob("*.yml"):
        cited = re.findall(r"\b((?:tests|benchmarks|examples|docs)/[\w/.-]+\.(?:py|md|json))", path.read_text())
        missing = [name for name in cited if not (ROOT / name).exists()]
        assert not missing, f"{path.name} cites files that do not exist: {missing}"


def test_top_level_exports():
    from sb3_pg_ext import GroupStartError

    assert issubclass(GroupStartError, RuntimeError)


def test_the_changelog_names_the_package_version_as_its_newest_release():
    import re

    import sb3_pg_ext

    releases = re.findall(
        r"^## (\d+\.\d+\.\d+) \(\d{4}-\d{2}-\d{2}\)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE
    )
    assert releases and releases[0] == sb3_pg_ext.__version__, (releases, sb3_pg_ext.__version__)
