"""The launcher's examples run as documented (examples/, docs/zoo.md), on budgets cut to seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, **env: str) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **env}
    # the console script of the environment that runs the tests
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_swap_ppo_trains_saves_reloads_each_class(tmp_path):
    out = run([sys.executable, str(ROOT / "examples" / "swap_ppo.py"), "--timesteps", "300"], tmp_path)
    for name in ("PPO", "REINFORCE", "ISPG", "PPOKL", "GRPO"):
        assert re.search(rf"^{name}\s+CartPole-v1:\s+[\d.]+ \+/-", out, re.MULTILINE), out
        assert (tmp_path / f"{name.lower()}_CartPole-v1.zip").is_file()


def test_grpo_token_task_script_prints_progress_and_answers(tmp_path):
    out = run(
        [sys.executable, str(ROOT / "examples" / "grpo_token_task.py"), "--timesteps", "600", "--eval-every", "300"],
        tmp_path,
    )
    assert re.search(r"steps  greedy success +[\d.]+%", out), out
    assert len(re.findall(r"^\d{3,4} -> ", out, re.MULTILINE)) == 5, out


@pytest.mark.slow
def test_zoo_train_enjoy_script(tmp_path):
    out = run(["bash", str(ROOT / "examples" / "zoo_train_enjoy.sh")], tmp_path, N_TIMESTEPS="300")
    assert out.count("Mean reward:") >= 4, out[-3000:]
    for algo in ("reinforce", "ispg", "ppo_kl", "grpo"):
        assert (tmp_path / "logs" / algo / "CartPole-v1_1" / "CartPole-v1.zip").is_file()


@pytest.mark.slow
def test_tune_shared_storage_script(tmp_path):
    run(["bash", str(ROOT / "examples" / "tune_shared_storage.sh")], tmp_path, N_TIMESTEPS="300", N_TRIALS="1")
    assert (tmp_path / "studies" / "grpo_CartPole-v1.log").is_file()
    assert (tmp_path / "logs" / "best" / "grpo" / "CartPole-v1_1" / "CartPole-v1.zip").is_file()
