"""The benchmark protocol's verdict on a shipped entry (``python -m benchmarks.tune protocol-table``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tune import candidate_table, protocol_table, study_name
from sb3_pg_ext.benchmark.store import FINISHED, ResultStore


def write_finals(root: Path, algo: str, env: str, finals: list[float]) -> None:
    store = ResultStore(root)
    for seed, final in zip((200, 201, 202, 203, 204), finals, strict=False):
        store.write({"algo": algo, "env": env, "seed": seed, "status": FINISHED, "final": {"mean": final}})


def row(table: str, algo: str, env: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {algo} | {env} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_an_entry_ships_only_with_an_iqm_at_least_the_defaults_and_cartpole_at_475_everywhere(tmp_path: Path) -> None:
    entries, defaults = tmp_path / "entries", tmp_path / "defaults"
    write_finals(entries, "grpo", "CartPole-v1", [500, 500, 500, 500, 500])
    write_finals(defaults, "grpo", "CartPole-v1", [462.8, 500, 480, 500, 500])
    # an IQM above the defaults', but one seed below CartPole-v1's bar of 475
    write_finals(entries, "ispg", "CartPole-v1", [500, 500, 500, 500, 470])
    write_finals(defaults, "ispg", "CartPole-v1", [400, 400, 400, 400, 400])
    # ... where the defaults end at 475 or more everywhere, they replace it
    write_finals(entries, "reinforce", "CartPole-v1", [500, 500, 500, 500, 470])
    write_finals(defaults, "reinforce", "CartPole-v1", [480, 480, 480, 480, 480])
    # a lower IQM than the defaults'
    write_finals(entries, "reinforce", "Pendulum-v1", [-1100, -1090, -1080, -1070, -1060])
    write_finals(defaults, "reinforce", "Pendulum-v1", [-1000, -1010, -1020, -1030, -1040])
    # equal IQMs ship; four seeds are pending
    write_finals(entries, "ppo_kl", "Pendulum-v1", [-150, -160, -170, -180, -190])
    write_finals(defaults, "ppo_kl", "Pendulum-v1", [-190, -180, -170, -160, -150])
    write_finals(entries, "ppo_kl", "CartPole-v1", [500, 500, 500, 500])
    write_finals(defaults, "ppo_kl", "CartPole-v1", [500, 500, 500, 500, 500])
    table = protocol_table(entries, defaults)

    grpo = row(table, "grpo", "CartPole-v1")
    assert grpo[2] == "500.0, 500.0, 500.0, 500.0, 500.0" and grpo[3] == "500.0 [500.0, 500.0]"
    assert grpo[-1] == "entry ships"
    assert row(table, "ispg", "CartPole-v1")[-1] == "neither holds (a seed below 475 with each): a new entry is needed"
    assert row(table, "reinforce", "CartPole-v1")[-1] == "defaults replace the entry"
    assert row(table, "reinforce", "Pendulum-v1")[-1] == "defaults replace the entry"
    assert row(table, "ppo_kl", "Pendulum-v1")[-1] == "entry ships"
    assert row(table, "ppo_kl", "CartPole-v1")[-1] == "pending"
    assert row(table, "grpo", "LunarLander-v3")[2:] == ["not run", "-", "not run", "-", "pending"]


def test_the_candidate_table_lists_each_candidate_on_its_own_selection_seeds(tmp_path: Path) -> None:
    for name, finals in {"entry": [500, 467, 500], "beta0": [500, 500, 480]}.items():
        store = ResultStore(tmp_path / name)
        for seed, final in zip((300, 301, 302), finals, strict=True):
            store.write({"algo": "grpo", "env": "CartPole-v1", "seed": seed, "status": FINISHED, "final": {"mean": final}})
        store.write({"algo": "grpo", "env": "CartPole-v1", "seed": 303, "status": "failed", "error": "diverged"})
    table = candidate_table("grpo", "CartPole-v1", tmp_path)
    assert row(table, "beta0", "3")[2:4] == ["300: 500.0, 301: 500.0, 302: 480.0", "0"]
    assert row(table, "entry", "3")[2:4] == ["300: 500.0, 301: 467.0, 302: 500.0", "1"]
    with pytest.raises(SystemExit, match="no finished candidate run of grpo on Pendulum-v1"):
        candidate_table("grpo", "Pendulum-v1", tmp_path)


def test_adopt_defaults_writes_the_defaults_entry_only_where_the_protocol_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from benchmarks import tune

    files = tmp_path / "hyperparams"
    files.mkdir()
    (files / "reinforce.yml").write_text(
        "default:\n  policy: 'MlpPolicy'\n\n# tuned\nCartPole-v1:\n  n_envs: 1\n  n_timesteps: 100000\n  policy: 'MlpPolicy'\n"
        "  baseline: 'optimal'\n  learning_rate: 0.00188508\n\nPendulum-v1:\n  n_envs: 1\n  policy: 'MlpPolicy'\n"
    )
    monkeypatch.setattr(tune, "HYPERPARAMS_DIR", files)
    before = yaml.safe_load((files / "reinforce.yml").read_text())
    entries, defaults = tmp_path / "entries", tmp_path / "defaults"
    write_finals(entries, "reinforce", "CartPole-v1", [500, 500, 498.4, 498.7, 500])
    write_finals(defaults, "reinforce", "CartPole-v1", [500, 500, 483.1, 500, 500])
    write_finals(entries, "reinforce", "Pendulum-v1", [-900] * 5)
    write_finals(defaults, "reinforce", "Pendulum-v1", [-1000] * 5)
    rows = tune.protocol_rows(entries, defaults)
    text = tune.adopt_defaults("reinforce", "CartPole-v1", rows, entries, defaults)
    # these records hold no config: none can stand for a protocol cell, all five are left to rerun
    assert text.endswith("seeds none are the defaults' runs (copied); seeds [200, 201, 202, 203, 204] are left to rerun")
    text = text.rsplit("\n", 1)[0]
    after = yaml.safe_load(text)
    assert after["CartPole-v1"] == {"n_envs": 1, "n_timesteps": 100000, "policy": "MlpPolicy"}
    assert {k: v for k, v in after.items() if k != "CartPole-v1"} == {k: v for k, v in before.items() if k != "CartPole-v1"}
    assert "an IQM of 499.6 (500.0, 500.0, 498.4, 498.7, 500.0) against the defaults' 500.0" in " ".join(
        text.replace("#", " ").split()
    )
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert '"baseline": "optimal", "learning_rate": 0.00188508}' in comment, "the comment keeps the replaced entry"
    assert "# tuned" not in text and "# hand-set: the constructor defaults" in text, "the old comment block is replaced"
    with pytest.raises(SystemExit, match="Pendulum-v1: the protocol's verdict is 'entry ships'"):
        tune.adopt_defaults("reinforce", "Pendulum-v1", rows, entries, defaults)


def test_the_defaults_runs_stand_for_the_protocol_cells_of_an_adopted_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import asdict

    from benchmarks import tune
    from sb3_pg_ext.benchmark import cells as cells_module
    from sb3_pg_ext.benchmark.presets import get_preset

    entries, defaults = ResultStore(tmp_path / "entries"), ResultStore(tmp_path / "defaults")
    defaults_cells = {c.seed: c for c in get_preset("protocol-defaults").cells() if c.key[:2] == ("grpo", "LunarLander-v3")}
    assert sorted(defaults_cells) == [200, 201, 202, 203, 204] and all(c.config for c in defaults_cells.values())
    for seed, cell in defaults_cells.items():
        if seed != 203:  # seed 203 of the defaults is still running
            config = {"cell": asdict(cell), "hyperparams": {"n_envs": 8, "policy": "MlpPolicy"}}
            defaults.write({**cell_record(cell, 20.0 + seed), "config": config})
        entries.write(cell_record(cell, -100.0 - seed))  # the replaced entry's runs
    # what stale_reasons says once the entry is the defaults: the old entry's runs are stale (other hyperparameters),
    # the defaults' are up to date, but seed 202's, made before the final evaluation was reseeded
    current = {"n_envs": 8, "policy": "MlpPolicy"}

    def stale(record: dict, cell) -> list[str]:
        assert cell.config is None, "judged against the protocol's cell"
        if record["seed"] == 202 and "config" in record:
            return ["protocol final_eval_seed: None -> 1000202"]
        return [] if record.get("config", {}).get("hyperparams") == current else ["hyperparams learning_rate"]

    monkeypatch.setattr(cells_module, "stale_reasons", stale)
    copied, left = tune.reuse_defaults_cells("grpo", "LunarLander-v3", entries.root, defaults.root)
    assert (copied, left) == ([200, 201, 204], [202, 203])
    for seed in (200, 201, 204):
        record = entries.read("grpo", "LunarLander-v3", seed)
        assert record["final"]["mean"] == 20.0 + seed
        assert record["copied_from"] == f"defaults/{defaults.path('grpo', 'LunarLander-v3', seed).name}"
        assert record["config"]["cell"]["config"] is None and record["config"]["hyperparams"] == current
    assert entries.read("grpo", "LunarLander-v3", 202)["final"]["mean"] == -302.0, "a stale defaults run is not copied"
    # run again: the copies are up to date and stay; nothing else changes
    assert tune.reuse_defaults_cells("grpo", "LunarLander-v3", entries.root, defaults.root) == ([], [202, 203])


def cell_record(cell, final: float) -> dict:
    return {"algo": cell.algo, "env": cell.env, "seed": cell.seed, "status": FINISHED, "final": {"mean": final}}


def test_a_study_judged_by_another_aggregate_has_a_name_of_its_own() -> None:
    # the journal, summary and retraining store are named after the study: an IQM study and a worst-seed study of
    # the same algorithm, env and K must not share them
    assert study_name("grpo", "CartPole-v1", 5) == "grpo-CartPole-v1-k5"
    assert study_name("grpo", "CartPole-v1", 5, aggregate="worst_seed") == "grpo-CartPole-v1-k5-worst_seed"
    assert study_name("grpo", "CartPole-v1", 3, repeat=2, aggregate="worst_seed") == "grpo-CartPole-v1-k3-r2-worst_seed"
