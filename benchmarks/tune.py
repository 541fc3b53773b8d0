"""
The tuning campaign behind ``hyperparams/*.yml``: one Optuna study per (algorithm, env, K), run through the launcher
(``sb3-pg-zoo train -optimize``) on a journal file that is committed, so that a study interrupted in one session
continues in the next; then the best trial of a study retrained on fresh seeds.

    python -m benchmarks.tune study --algo reinforce --env CartPole-v1 --eval-seeds 3 -n 50000 --trials 12
    python -m benchmarks.tune retrain --algo reinforce --env CartPole-v1 --eval-seeds 3 -n 50000 --seeds 100-104
    python -m benchmarks.tune apply --algo reinforce --env CartPole-v1 --eval-seeds 3
    python -m benchmarks.tune compare --algo reinforce --env CartPole-v1 -n 100000 --seeds 200-202
    python -m benchmarks.tune protocol-table     # every entry against the defaults under the benchmark protocol
    python -m benchmarks.tune adopt-defaults --algo reinforce --env CartPole-v1   # where the defaults replace it
    python -m benchmarks.tune candidate-table --algo grpo --env CartPole-v1   # candidate entries, selection seeds
    python -m benchmarks.tune table
    # a trial judged by its worst final policy (the CartPole-v1 bar: every seed at 475 or more)
    python -m benchmarks.tune study --algo grpo --env CartPole-v1 --eval-seeds 5 -n 100000 --trials 24 \
        --aggregate worst_seed

``study`` runs trials until the study holds ``--trials`` finished (complete or pruned) trials and writes
``results/tuning/<study>.json``: the best trial's number, value, parameters and hyperparameters, the trial counts
and the tuning budget (env steps trained, CPU seconds of the tuning processes summed over sessions). A trial left
running by an interrupted session is marked failed and does not count. ``retrain`` trains the best trial's
settings (``--trial-id``; it waits for the study's summary, so a study running elsewhere is not retrained
half-way) on each fresh seed through the benchmark's cell runner (deterministic final evaluation of
10 episodes on an eval env seeded apart) into ``results/tuning/retrain/<study>/``; finished seeds are skipped.
``apply`` writes the best trial into ``hyperparams/<algo>.yml`` (on top of the env's hand-set entry, with a
comment saying how it was obtained). ``compare`` trains the file's entry (tuned) and the untuned defaults (the
file's ``default`` entry) on the same fresh seeds and budget into ``results/tuning/compare/{tuned,default}/``; at
an env's benchmark budget (``GRID_BUDGETS``) the entry's runs are the benchmark grid's own cells, in its store
``results/grid/`` (whichever of the two runs a cell first, the other reuses it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import re
import subprocess
import tempfile
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import optuna.storages.journal
import yaml
from optuna.trial import TrialState

from sb3_pg_ext import HYPERPARAMS_DIR
from sb3_pg_ext.benchmark.cells import Cell, reuse_records
from sb3_pg_ext.benchmark.grid import run_grid
from sb3_pg_ext.benchmark.presets import GRID_BUDGETS, PRESETS
from sb3_pg_ext.benchmark.store import FINISHED, ResultStore
from sb3_pg_ext.zoo.aggregate import AGGREGATES
from sb3_pg_ext.zoo.cli import main as zoo_main
from sb3_pg_ext.zoo.hyperparams_files import set_entry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "tuning"
N_EVALUATIONS = 5
#: The README benchmark's store; its budgets (GRID_BUDGETS) and seeds are the ``readme`` preset's
#: (sb3_pg_ext.benchmark.presets): at an env's budget, seeds 200-202 of the comparison are the grid's cells.
GRID_STORE = ROOT / PRESETS["readme"].store
EVAL_EPISODES = 5
N_STARTUP_TRIALS = 4
SAMPLER = "tpe"
PRUNER = "median"


def study_name(algo: str, env: str, eval_seeds: int, repeat: int | None = None, aggregate: str = "iqm") -> str:
    """
    ``<algo>-<env>-k<K>``, with ``-r<R>`` for the R-th repetition of a study (stability measurements) and
    ``-<aggregate>`` for a trial value other than the IQM (``--aggregate``).
    """
    return (
        f"{algo}-{env}-k{eval_seeds}"
        + ("" if repeat is None else f"-r{repeat}")
        + ("" if aggregate == "iqm" else f"-{aggregate}")
    )


def journal(name: str) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(RESULTS / f"{name}.log")))


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def run_study(
    algo: str,
    env: str,
    eval_seeds: int,
    n_timesteps: int,
    trials: int,
    repeat: int | None = None,
    aggregate: str = "iqm",
) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = study_name(algo, env, eval_seeds, repeat, aggregate)
    # the sampler's (and the trial seeds') base seed: a K = 1 and a K = 3 study of the same repetition draw the
    # same first trials, so they differ by their objective only
    seed = 0 if repeat is None else 1000 * repeat
    summary_path = RESULTS / f"{name}.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    cpu_before = float(previous.get("cpu_seconds", 0.0))
    storage = journal(name)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # left running by a stopped session
    remaining = trials - len(_finished(study))
    cpu = time.process_time()
    if remaining > 0:
        args = [
            "train",
            "--algo",
            algo,
            "--env",
            env,
            "-n",
            str(n_timesteps),
            "-optimize",
            "--n-trials",
            str(remaining),
            "--n-startup-trials",
            str(N_STARTUP_TRIALS),
            "--n-evaluations",
            str(N_EVALUATIONS),
            "--eval-episodes",
            str(EVAL_EPISODES),
            "--sampler",
            SAMPLER,
            "--pruner",
            PRUNER,
            "--storage",
            str(RESULTS / f"{name}.log"),
            "--study-name",
            name,
            "--seed",
            str(seed + len(study.trials)),  # a resumed study does not replay the sampler's first draws
            "--no-optim-plots",
            "--verbose",
            "0",
            "-f",
            str(Path(tempfile.gettempdir()) / "sb3-pg-tune-logs"),
            "--eval-seeds",
            str(eval_seeds),
            "--eval-aggregate",
            aggregate,
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            zoo_main(args)
    cpu = time.process_time() - cpu
    study = optuna.load_study(study_name=name, storage=journal(name))
    finished = _finished(study)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    best = study.best_trial
    # env steps trained: every run of a complete trial trains the budget; a pruned trial stops after the
    # evaluation point of its last report
    steps = 0
    for t in finished:
        points = N_EVALUATIONS if t.state == TrialState.COMPLETE else max(len(t.intermediate_values), 1)
        steps += eval_seeds * n_timesteps * points // N_EVALUATIONS
    summary = {
        "study": name,
        "repeat": repeat,
        "algo": algo,
        "env": env,
        "eval_seeds": eval_seeds,
        "eval_aggregate": aggregate,
        "n_timesteps_per_run": n_timesteps,
        "n_evaluations": N_EVALUATIONS,
        "eval_episodes": EVAL_EPISODES,
        "sampler": SAMPLER,
        "pruner": PRUNER,
        "n_startup_trials": N_STARTUP_TRIALS,
        "trials_complete": len(complete),
        "trials_pruned": len(finished) - len(complete),
        "env_steps_trained": steps,
        "cpu_seconds": cpu_before + cpu,
        "best": {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "seed_returns": best.user_attrs.get("seed_returns"),
            "n_episodes": best.user_attrs.get("n_episodes"),
        },
        "values": {t.number: t.value for t in complete},
        "date": datetime.date.today().isoformat(),
    }
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True))
    tmp.replace(summary_path)
    return summary


def _final_means(store: ResultStore, cells: list[Cell] | None = None) -> list[float]:
    """The final mean returns of the store's finished records (of ``cells``, in their order, when given)."""
    records = store.records() if cells is None else (store.read(*c.key) for c in cells)
    return [r["final"]["mean"] for r in records if r is not None and r["status"] == FINISHED]


def _reuse_identical_retraining(store: ResultStore, name: str, params: dict[str, Any], cells: list[Cell]) -> None:
    """
    Where another study of the same algorithm and env picked exactly the same settings (e.g. a K = 1 and a K = 3
    study whose samplers drew the same trial), its retraining on the same seeds is the same deterministic training:
    copy those records (marked ``copied_from``, with this study's cell, so that the grid does not take them for
    stale) instead of training them again.
    """
    this = json.loads((RESULTS / f"{name}.json").read_text())
    for path in sorted(RESULTS.glob("*.json")):
        other = json.loads(path.read_text())
        if other["study"] == name or (other["algo"], other["env"]) != (this["algo"], this["env"]):
            continue
        if other["best"]["params"] != params:
            continue
        source = ResultStore(str(RESULTS / "retrain" / other["study"]))
        for cell in cells:
            record = source.read(*cell.key)
            if record is not None and record["status"] == FINISHED and store.read(*cell.key) is None:
                config = {**record["config"], "cell": asdict(cell)}
                store.write({**record, "config": config, "copied_from": other["study"]})


def retrain(
    algo: str,
    env: str,
    eval_seeds: int,
    n_timesteps: int,
    seeds: list[int],
    repeat: int | None = None,
    aggregate: str = "iqm",
) -> list[float]:
    name = study_name(algo, env, eval_seeds, repeat, aggregate)
    while not (RESULTS / f"{name}.json").is_file():  # the study still runs (in the other lane): wait for its end
        time.sleep(60)
    best = optuna.load_study(study_name=name, storage=journal(name)).best_trial
    store = ResultStore(str(RESULTS / "retrain" / name))
    cells = [
        Cell(
            algo,
            env,
            s,
            n_timesteps,
            n_evaluations=N_EVALUATIONS,
            storage=str(RESULTS / f"{name}.log"),
            study_name=name,
            trial_id=best.number,
        )
        for s in seeds
    ]
    _reuse_identical_retraining(store, name, best.params, cells)
    run_grid(cells, store, workers=1, progress=False)
    return _final_means(store, cells)


def _file_value(value: Any) -> Any:
    """
    A hyperparameter as the yml files hold it: a ``policy_kwargs`` dict as the string rl-zoo3 evaluates (with
    torch.nn imported as nn), a float to 6 significant digits.
    """
    if isinstance(value, dict):
        return "dict(" + ", ".join(f"{k}={_python_value(v)}" for k, v in value.items()) + ")"
    if isinstance(value, float):  # 6 significant digits, an integral value without exponent as an int
        text = f"{value:.6g}"
        return float(text) if "e" in text else yaml.safe_load(text)
    return value


def _python_value(value: Any) -> str:
    if isinstance(value, type):
        return f"nn.{value.__name__}"
    if isinstance(value, dict):
        return "dict(" + ", ".join(f"{k}={_python_value(v)}" for k, v in value.items()) + ")"
    return repr(value)


def tuned_entry(
    summary: dict[str, Any], base: dict[str, Any], n_timesteps: int | None = None, note: str = ""
) -> tuple[dict[str, Any], str]:
    """The entry (hyperparameters, comment) of a study's best trial on top of the file's current entry ``base``."""
    from sb3_pg_ext.zoo.samplers import HYPERPARAMS_CONVERTER

    best = summary["best"]
    hyperparams = dict(base)
    tuned = HYPERPARAMS_CONVERTER[summary["algo"]](dict(best["params"]))
    hyperparams.update(tuned)
    budget = ""
    if n_timesteps is not None:
        hyperparams["n_timesteps"] = n_timesteps
        budget = f"n_timesteps {n_timesteps:.0e} (the benchmark's budget for the env); "
    if isinstance(hyperparams.get("learning_rate"), str) and hyperparams["learning_rate"].startswith("lin_"):
        hyperparams["learning_rate"] = "lin_" + f"{float(hyperparams['learning_rate'][4:]):.6g}"
    trials = summary["trials_complete"] + summary["trials_pruned"]
    plural = "s" if summary["eval_seeds"] > 1 else ""
    comment = (
        f"tuned with `sb3-pg-zoo train -optimize` ({summary['sampler']} sampler, {summary['pruner']} pruner, "
        f"{summary['n_startup_trials']} startup trials): {trials} trials ({summary['trials_complete']} complete, "
        f"{summary['trials_pruned']} pruned), {summary['n_timesteps_per_run']:,} steps per run, "
        f"{summary['eval_seeds']} seed{plural} per trial (--eval-seeds {summary['eval_seeds']}, IQM of "
        f"{summary['eval_seeds']} x {summary['eval_episodes']} returns at {summary['n_evaluations']} points); best "
        f"trial {best['number']} (value {best['value']:.1f}); {summary['date']}; {budget}"
        f"study benchmarks/results/tuning/{summary['study']}.log; keys not tuned kept from the hand-set entry: "
        + ", ".join(sorted(k for k in base if k not in tuned and not (n_timesteps and k == "n_timesteps")))
        + (f"; {note}" if note else "")
    )
    return {key: _file_value(value) for key, value in hyperparams.items()}, _wrap_comment(comment)


def _wrap_comment(text: str, width: int = 116) -> str:
    """``text`` in lines of at most ``width`` characters (the comment lines' ``# `` comes on top)."""
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


def _entry_span(lines: list[str], env: str) -> tuple[int, int] | None:
    """The lines [start, end) of the env's entry in a yml file, its comment included; None when it has none."""
    if f"{env}:" not in lines:
        return None
    start = lines.index(f"{env}:")
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    end = lines.index(f"{env}:") + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return start, end


def hand_set_entry(algo: str, env: str) -> tuple[str, list[str]]:
    """
    The env's latest hand-set entry of ``hyperparams/<algo>.yml`` (comment and entry lines), from the working tree
    or else the file's git history (an applied study replaced it): (where it was found, its lines).
    """
    relative = f"hyperparams/{algo}.yml"
    versions = [("working tree", (ROOT / relative).read_text())]
    commits = subprocess.run(
        ["git", "log", "--format=%H", "--", relative], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for commit in commits:
        show = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=ROOT, capture_output=True, text=True)
        if show.returncode == 0:
            versions.append((f"commit {commit[:10]}", show.stdout))
    for where, text in versions:
        lines = text.splitlines()
        span = _entry_span(lines, env)
        if span is not None:
            block = lines[span[0] : span[1]]
            if not any("tuned with" in line for line in block if line.startswith("#")):
                return where, block
    raise LookupError(f"no hand-set {env} entry in {relative} or its history")


def baseline(algo: str, env: str, n_timesteps: int, seeds: list[int]) -> float:
    """
    The hand-set entry under the trial protocol of a study (one run per seed, N_EVALUATIONS evaluations of
    EVAL_EPISODES episodes; value: the IQM of all runs' returns at the last evaluation), so that ``apply`` keeps it
    where the study's best trial scored below it. Writes ``results/tuning/baseline/<algo>-<env>.{yml,json}`` and the
    runs' records.
    """
    from sb3_pg_ext.zoo.aggregate import AGGREGATES

    where, block = hand_set_entry(algo, env)
    name = f"{algo}-{env.replace('/', '-')}"
    folder = RESULTS / "baseline"
    folder.mkdir(parents=True, exist_ok=True)
    # the entry's own n_timesteps does not count: the runs train the study's budget per run
    entry = [line for line in block if not line.startswith("#") and not line.startswith("  n_timesteps:")]
    done = folder / f"{name}.json"
    if done.is_file():  # measured before for the same entry, budget and seeds (the value reads no final evaluation)
        previous = json.loads(done.read_text())
        if (previous.get("entry_lines"), previous["n_timesteps"], previous["seeds"]) == (entry, n_timesteps, seeds):
            return float(previous["value"])
    config = folder / f"{name}.yml"
    config.write_text(f"# the hand-set entry of hyperparams/{algo}.yml ({where})\n" + "\n".join(block) + "\n")
    store = ResultStore(str(folder / name))
    cells = [
        Cell(algo, env, s, n_timesteps, n_evaluations=N_EVALUATIONS, n_eval_episodes=EVAL_EPISODES, config=str(config))
        for s in seeds
    ]
    run_grid(cells, store, workers=1, progress=False)
    records = [store.read(*c.key) for c in cells]
    last = [r["curve"]["returns"][-1] for r in records if r is not None and r["status"] == FINISHED]
    value = float(AGGREGATES["iqm"](last))
    summary = {
        "algo": algo,
        "env": env,
        "entry": where,
        "entry_lines": entry,
        "n_timesteps": n_timesteps,
        "seeds": seeds,
        "value": value,
    }
    (folder / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return value


def apply(
    algo: str, env: str, eval_seeds: int, n_timesteps: int | None = None, repeat: int | None = None, note: str = ""
) -> Path:
    """
    Write a study's best trial into ``hyperparams/<algo>.yml`` in place of the env's entry (and its comment), unless
    ``baseline`` measured the hand-set entry at or above the best trial's value: then the hand-set entry stays, with
    a comment saying so (tuning replaces an entry only where it scores higher; on a tie, such as 500 on CartPole-v1,
    the entry that was there is kept, since nothing was measured in favour of the change).
    """
    summary = json.loads((RESULTS / f"{study_name(algo, env, eval_seeds, repeat)}.json").read_text())
    path = HYPERPARAMS_DIR / f"{algo}.yml"
    entries = yaml.safe_load(path.read_text())
    assert env in entries, f"{path} has no {env} entry"
    measured = RESULTS / "baseline" / f"{algo}-{env.replace('/', '-')}.json"
    kept = json.loads(measured.read_text()) if measured.is_file() else None
    if kept is not None and kept["value"] >= summary["best"]["value"]:
        _, block = hand_set_entry(algo, env)
        comments = [line for line in block if line.startswith("#")]
        # an entry kept before: its own reasoning starts after the previous "As hand-set:"
        ends = [i for i, line in enumerate(comments) if line.endswith("As hand-set:")]
        comments = comments[ends[-1] + 1 :] if ends else comments
        comments = [c.replace("# hand-set (not tuned yet): ", "# ") for c in comments]
        hyperparams = yaml.safe_load("\n".join(line for line in block if not line.startswith("#")))[env]
        if n_timesteps is not None and "n_timesteps" in hyperparams:
            hyperparams["n_timesteps"] = n_timesteps
        trials = summary["trials_complete"] + summary["trials_pruned"]
        reason = (
            f"hand-set, kept over tuning: the best of {trials} trials of study benchmarks/results/tuning/"
            f"{summary['study']}.log scored {summary['best']['value']:.1f}, this entry {kept['value']:.1f}"
            + (" (a tie keeps the entry)" if kept["value"] == summary["best"]["value"] else "")
            + " under the same protocol"
            + f" (python -m benchmarks.tune baseline, seeds {kept['seeds'][0]}-{kept['seeds'][-1]}); "
            + (f"n_timesteps {n_timesteps:.0e} (the benchmark's budget for the env); " if n_timesteps else "")
            + f"{summary['date']}. As hand-set:"
        )
        comment = "\n".join([_wrap_comment(reason), *(c.removeprefix("#").removeprefix(" ") for c in comments)])
    else:
        hyperparams, comment = tuned_entry(summary, entries[env], n_timesteps, note)
    set_entry(path, env, hyperparams, comment)
    assert yaml.safe_load(path.read_text())[env] is not None
    return path


def compare(algo: str, env: str, n_timesteps: int, seeds: list[int]) -> dict[str, list[float]]:
    """
    The tuned entry of ``hyperparams/<algo>.yml`` against the untuned defaults (the file's ``default`` entry: the
    constructor's defaults, one env) on the same fresh seeds and budget; results in
    ``results/tuning/compare/{tuned,default}/``.
    """
    defaults = yaml.safe_load((HYPERPARAMS_DIR / f"{algo}.yml").read_text())["default"]
    defaults_file = RESULTS / "compare" / "default" / f"{algo}-{env.replace('/', '-')}.yml"
    defaults_file.parent.mkdir(parents=True, exist_ok=True)
    defaults_file.write_text(yaml.safe_dump({env: defaults}))
    finals: dict[str, list[float]] = {}
    for variant, config in (("tuned", None), ("default", str(defaults_file))):
        if variant == "tuned" and GRID_BUDGETS.get(env) == n_timesteps:
            store, cells = ResultStore(str(GRID_STORE)), [Cell(algo, env, s, n_timesteps) for s in seeds]
        else:
            store = ResultStore(str(RESULTS / "compare" / variant))
            cells = [Cell(algo, env, s, n_timesteps, n_evaluations=N_EVALUATIONS, config=config) for s in seeds]
        run_grid(cells, store, workers=1, progress=False)
        finals[variant] = _final_means(store, cells)
    return finals


def trial_hours(name: str) -> float:
    """
    Wall-clock hours of a study's finished trials, from its journal (start to end of each complete or pruned trial,
    whatever session ran it; the CPU seconds of a summary miss the sessions that were stopped before its end).
    """
    study = optuna.load_study(study_name=name, storage=journal(name))
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in _finished(study)
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    return sum(spans) / 3600


def table() -> None:
    """Markdown table of every study summary and its retrained seeds."""
    print(
        "| study | trials (complete/pruned) | env steps | trial hours (wall) | best value | hand-set entry, same protocol "
        "| in the file | retrained final returns |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("*.json")):
        s = json.loads(path.read_text())
        measured = RESULTS / "baseline" / f"{s['algo']}-{s['env'].replace('/', '-')}.json"
        hand_set = f"{json.loads(measured.read_text())['value']:.1f}" if measured.is_file() else "-"
        origin = _entry_origins(HYPERPARAMS_DIR / f"{s['algo']}.yml").get(s["env"], "")
        in_file = "tuned" if origin == f"tuned ({s['study']})" else ("hand-set kept" if "kept" in origin else "-")
        store = ResultStore(str(RESULTS / "retrain" / s["study"]))
        finals = _final_means(store)
        finals_text = ", ".join(f"{v:.1f}" for v in finals)
        if finals:
            finals_text += f" (mean {np.mean(finals):.1f}, std {np.std(finals):.1f})"
        print(
            f"| {s['study']} | {s['trials_complete']}/{s['trials_pruned']} | {s['env_steps_trained']:,} "
            f"| {trial_hours(s['study']):.2f} | {s['best']['value']:.1f} | {hand_set} | {in_file} | {finals_text} |"
        )


def stability_table() -> None:
    """
    K = 1 against K = 3: for every repeated study, the best trial's value (what the study promised) next to the mean
    and std of its retraining on fresh seeds (what a user gets), and their gap (the optimism of the pick).
    """
    rows: dict[tuple[str, str, int], list[tuple[float, list[float]]]] = {}
    for path in sorted(RESULTS.glob("*-r*.json")):
        s = json.loads(path.read_text())
        store = ResultStore(str(RESULTS / "retrain" / s["study"]))
        finals = _final_means(store)
        if finals:
            rows.setdefault((s["algo"], s["env"], s["eval_seeds"]), []).append((s["best"]["value"], finals))
    print("| algo | env | K | studies | promised (best value) | retrained mean | retrained std over seeds | gap |")
    print("|---|---|---|---|---|---|---|---|")
    for (algo, env, k), studies in sorted(rows.items()):
        promised = np.array([p for p, _ in studies])
        means = np.array([np.mean(f) for _, f in studies])
        stds = np.array([np.std(f) for _, f in studies])
        print(
            f"| {algo} | {env} | {k} | {len(studies)} | {promised.mean():.1f} | {means.mean():.1f} "
            f"(per study: {', '.join(f'{m:.0f}' for m in means)}) | {stds.mean():.1f} | {(promised - means).mean():.1f} |"
        )


def _entry_origins(path: Path) -> dict[str, str]:
    """Each entry of a hyperparameter file and how its comment says it was obtained: a study's name or "hand-set"."""
    origins: dict[str, str] = {}
    comment: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            comment.append(line)
        elif line and not line.startswith(" "):
            text = " ".join(comment)
            study = re.search(r"benchmarks/results/tuning/(\S+)\.log", text)
            tuned = "tuned with" in text and study is not None
            kept = "hand-set (kept over its study)" if "kept over tuning" in text else "hand-set"
            origins[line.rstrip(":").strip("'\"")] = f"tuned ({study.group(1)})" if tuned else kept  # type: ignore[union-attr]
            comment = []
        elif not line:
            comment = []
    return origins


def compare_table() -> None:
    """
    Every entry of the four hyperparameter files: how it was obtained, and its final return next to the file's
    ``default`` entry on the fresh seeds of ``compare`` ("not run" where no comparison ran yet; "stale" where the
    entry changed after it ran).
    """
    from sb3_pg_ext.benchmark.cells import is_stale

    # the entry's runs: the grid's cells (seeds 200-202 at the benchmark's budget) or compare/tuned's, whichever holds
    # more of the seeds (the grid on a tie); the two are not mixed, since their evaluation protocols differ
    grid = ResultStore(str(GRID_STORE))
    sources = {"grid": grid, "tuned": ResultStore(str(RESULTS / "compare" / "tuned"))}
    found: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {name: {} for name in sources}
    for name, store in sources.items():
        for r in store.records():
            if r["status"] != FINISHED:
                continue
            at_budget = GRID_BUDGETS.get(r["env"]) == r["config"]["cell"]["n_timesteps"]
            if name == "grid" and (r["seed"] not in (200, 201, 202) or not at_budget):
                continue
            found[name].setdefault((r["algo"], r["env"]), []).append(r)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    budgets: dict[tuple[str, str], int] = {}
    stale: set[tuple[str, str]] = set()
    for key in set(found["grid"]) | set(found["tuned"]):
        chosen = max((found["grid"].get(key, []), found["tuned"].get(key, [])), key=len)
        chosen = sorted(chosen, key=lambda r: r["seed"])
        rows.setdefault(key, {})["tuned"] = [r["final"]["mean"] for r in chosen]
        budgets[key] = chosen[0]["config"]["cell"]["n_timesteps"]
        if any(is_stale(r, Cell(**r["config"]["cell"])) for r in chosen):
            stale.add(key)
    for r in sorted(ResultStore(str(RESULTS / "compare" / "default")).records(), key=lambda r: r["seed"]):
        if r["status"] == FINISHED:
            rows.setdefault((r["algo"], r["env"]), {}).setdefault("default", []).append(r["final"]["mean"])
            budgets.setdefault((r["algo"], r["env"]), r["config"]["cell"]["n_timesteps"])
    print("| algo | env | entry | steps | entry's final return per seed | default's final return per seed |")
    print("|---|---|---|---|---|---|")
    for algo in ("reinforce", "ispg", "ppo_kl", "grpo"):
        for env, origin in _entry_origins(HYPERPARAMS_DIR / f"{algo}.yml").items():
            if env == "default":
                continue
            finals = rows.get((algo, env), {})
            cells = []
            for variant in ("tuned", "default"):
                values = finals.get(variant, [])
                text = ", ".join(f"{v:.1f}" for v in values)
                cells.append(f"{text} (mean {np.mean(values):.1f})" if values else "not run")
            if (algo, env) in stale:
                cells[0] += " (stale: settings or protocol changed since; reruns)"
            steps = f"{budgets[(algo, env)]:,}" if (algo, env) in budgets else "-"
            print(f"| {algo} | {env} | {origin} | {steps} | {cells[0]} | {cells[1]} |")


#: CartPole-v1's bar for a shipped entry: every seed's final return at least this
CARTPOLE_BAR = 475.0
DEFAULTS_REPLACE = "defaults replace the entry"


def protocol_stores(entry_store: Path | None = None, defaults_store: Path | None = None) -> dict[str, ResultStore]:
    """
    The results stores of the protocol's entries (``"entry"``) and constructor defaults (``"defaults"``).

    :param entry_store: the entries' results store (default: the ``protocol`` preset's)
    :param defaults_store: the defaults' results store (default: the ``protocol-defaults`` preset's)
    """
    from sb3_pg_ext.benchmark.presets import get_preset

    return {
        "entry": ResultStore(entry_store or ROOT / get_preset("protocol").store),
        "defaults": ResultStore(defaults_store or ROOT / get_preset("protocol-defaults").store),
    }


def protocol_rows(entry_store: Path | None = None, defaults_store: Path | None = None) -> list[dict[str, Any]]:
    """
    The benchmark protocol's judgement of every shipped entry of the four algorithms: its final returns on the
    ``protocol`` preset's seeds (200-204, rl-zoo3's PPO budget per env, through the launcher) next to the constructor
    defaults' on the same cells (``protocol-defaults``), with rliable's IQM and 95% CI of each. An entry ships when its
    IQM is at least the defaults' (and, on CartPole-v1, every seed ends at 475 or more); otherwise the defaults
    replace it, unless on CartPole-v1 they too end below 475 on a seed: then neither holds, and a new entry must be
    chosen on other seeds (``candidate-table``). "pending" until both have all five seeds.

    :param entry_store: the entries' results store (default: the ``protocol`` preset's)
    :param defaults_store: the defaults' results store (default: the ``protocol-defaults`` preset's)
    :return: one dict per (algo, env): ``algo``, ``env``, ``finals`` (variant -> final returns in seed order),
        ``stats`` (variant -> rliable's IQM and CI) and ``verdict``
    """
    from sb3_pg_ext.benchmark.presets import PACKAGE_ALGOS, get_preset
    from sb3_pg_ext.benchmark.report import iqm_intervals

    entries, defaults = (get_preset(name) for name in ("protocol", "protocol-defaults"))
    finals: dict[str, dict[tuple[str, str], dict[int, float]]] = {}
    stores = protocol_stores(entry_store, defaults_store)
    for name, preset in (("entry", entries), ("defaults", defaults)):
        store = stores[name]
        finals[name] = {}
        for cell in preset.cells():
            record = store.read(*cell.key)
            if cell.algo in PACKAGE_ALGOS and record is not None and record["status"] == FINISHED:
                finals[name].setdefault((cell.algo, cell.env), {})[cell.seed] = float(record["final"]["mean"])
    seeds = sorted({cell.seed for cell in entries.cells()})
    rows = []
    keys = sorted({(c.algo, c.env) for c in defaults.cells()}, key=lambda k: (PACKAGE_ALGOS.index(k[0]), k[1]))
    for algo, env in keys:
        per_variant = {}
        for name in ("entry", "defaults"):
            values = finals[name].get((algo, env), {})
            per_variant[name] = [values[s] for s in seeds if s in values]
        complete = all(len(values) == len(seeds) for values in per_variant.values())
        stats = iqm_intervals({k: v for k, v in per_variant.items() if v}, env=env) if any(per_variant.values()) else {}
        if not complete:
            verdict = "pending"
        else:
            ships = stats["entry"]["iqm"] >= stats["defaults"]["iqm"]
            if env == "CartPole-v1" and min(per_variant["entry"]) < CARTPOLE_BAR:
                ships = False
            verdict = "entry ships" if ships else DEFAULTS_REPLACE
            if not ships and env == "CartPole-v1" and min(per_variant["defaults"]) < CARTPOLE_BAR:
                verdict = f"neither holds (a seed below {CARTPOLE_BAR:.0f} with each): a new entry is needed"
        rows.append({"algo": algo, "env": env, "finals": per_variant, "stats": stats, "verdict": verdict})
    return rows


def protocol_table(entry_store: Path | None = None, defaults_store: Path | None = None) -> str:
    """:func:`protocol_rows` as a markdown table."""
    lines = [
        "| algo | env | entry: final return per seed | IQM [95% CI] | defaults: final return per seed | IQM [95% CI] "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in protocol_rows(entry_store, defaults_store):
        columns = []
        for name in ("entry", "defaults"):
            columns.append(", ".join(f"{v:.1f}" for v in row["finals"][name]) or "not run")
            s = row["stats"].get(name)
            columns.append(f"{s['iqm']:.1f} [{s['low']:.1f}, {s['high']:.1f}]" if s else "-")
        lines.append(f"| {row['algo']} | {row['env']} | {' | '.join(columns)} | {row['verdict']} |")
    return "\n".join(lines)


def adopt_defaults(
    algo: str,
    env: str,
    rows: list[dict[str, Any]] | None = None,
    entry_store: Path | None = None,
    defaults_store: Path | None = None,
) -> str:
    """
    Replace ``algo``'s entry for ``env`` by the constructor defaults (the ``protocol-defaults`` preset's file:
    ``policy`` and ``n_envs``, with the protocol's budget), where :func:`protocol_rows` says the defaults replace it;
    the comment above the new entry gives both IQMs and keeps the replaced entry's settings. Its ``protocol`` cells
    turn stale; :func:`reuse_defaults_cells` then puts the defaults' own runs in their place, and the cells it cannot
    (rerun them with ``RERUN_STALE=1 bash benchmarks/grid_campaign.sh protocol``) are named.

    :param rows: :func:`protocol_rows` (default: computed from the stores)
    :param entry_store: the entries' results store (default: the ``protocol`` preset's)
    :param defaults_store: the defaults' results store (default: the ``protocol-defaults`` preset's)
    :return: the new entry's text, then what was copied and what is left to rerun
    """
    from sb3_pg_ext.benchmark.presets import PROTOCOL_BUDGETS, get_preset

    row = next((r for r in rows or protocol_rows() if (r["algo"], r["env"]) == (algo, env)), None)
    if row is None or row["verdict"] != DEFAULTS_REPLACE:
        raise SystemExit(f"{algo} on {env}: the protocol's verdict is {row and row['verdict']!r}, not {DEFAULTS_REPLACE!r}")
    config = get_preset("protocol-defaults").grids[0].configs[algo]
    defaults = yaml.safe_load(Path(config).read_text())[env]
    path = HYPERPARAMS_DIR / f"{algo}.yml"
    replaced = yaml.safe_load(path.read_text())[env]
    entry = {"n_envs": defaults["n_envs"], "n_timesteps": PROTOCOL_BUDGETS[env], "policy": defaults["policy"]}
    stats = row["stats"]
    comment = (
        f"hand-set: the constructor defaults ({datetime.date.today().isoformat()}); under the benchmark protocol "
        f"(seeds 200-204, {PROTOCOL_BUDGETS[env]:g} env steps, `python -m benchmarks.tune protocol-table`) the shipped "
        "entry ended with "
        f"an IQM of {stats['entry']['iqm']:.1f} ({', '.join(f'{v:.1f}' for v in row['finals']['entry'])}) against "
        f"the defaults' {stats['defaults']['iqm']:.1f} ({', '.join(f'{v:.1f}' for v in row['finals']['defaults'])}), "
        f"so the defaults replace it. The entry it replaced: {json.dumps(replaced, sort_keys=False)}"
    )
    set_entry(path, env, entry, _wrap_comment(comment))
    copied, left = reuse_defaults_cells(algo, env, entry_store, defaults_store)
    return (
        f"{path.read_text()}\n{algo} on {env}: the protocol cells of seeds {copied or 'none'} are the defaults' runs "
        f"(copied); seeds {left or 'none'} are left to rerun"
    )


def reuse_defaults_cells(
    algo: str, env: str, entry_store: Path | None = None, defaults_store: Path | None = None
) -> tuple[list[int], list[int]]:
    """
    Once an entry is the constructor defaults, the ``protocol-defaults`` cells of ``(algo, env)`` are runs of the
    ``protocol`` cells themselves: the same effective hyperparameters, seeds, budget and launcher, only the path of
    the hyperparameter file differs. Their finished records are copied into the protocol store
    (:func:`~sb3_pg_ext.benchmark.cells.reuse_records`) instead of being trained again (up to an hour per cell on
    the long envs).

    :param entry_store: the entries' results store (default: the ``protocol`` preset's)
    :param defaults_store: the defaults' results store (default: the ``protocol-defaults`` preset's)
    :return: the seeds copied, and the seeds whose protocol cell is still stale or missing
    """
    from sb3_pg_ext.benchmark.presets import get_preset

    stores = protocol_stores(entry_store, defaults_store)
    cells = [cell for cell in get_preset("protocol").cells() if (cell.algo, cell.env) == (algo, env)]
    copied, left = reuse_records(cells, stores["defaults"], stores["entry"])
    return [cell.seed for cell in copied], [cell.seed for cell in left]


#: Candidate entries (``benchmarks/candidate_campaign.sh``): ``CANDIDATES/<algo>-<env>/<name>.yml``, each trained
#: into its own store ``CANDIDATE_RESULTS/<algo>-<env>/<name>``
CANDIDATES = ROOT / "benchmarks" / "candidates"
CANDIDATE_RESULTS = ROOT / "benchmarks" / "results" / "candidates"


def candidate_table(algo: str, env: str, results: Path | None = None) -> str:
    """
    The candidate entries of ``algo`` on ``env`` side by side, on the selection seeds each was trained on (never the
    protocol's 200-204): final return per seed, how many end below CartPole-v1's bar of 475, rliable's IQM and CI.

    :param results: the folder of the candidates' stores (default: ``CANDIDATE_RESULTS/<algo>-<env>``)
    :return: the markdown table
    """
    from sb3_pg_ext.benchmark.report import iqm_intervals

    folder = results or CANDIDATE_RESULTS / f"{algo}-{env}"
    finals: dict[str, dict[int, float]] = {}
    for store_dir in sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []:
        records = [r for r in ResultStore(str(store_dir)).records() if r["algo"] == algo and r["env"] == env]
        finals[store_dir.name] = {int(r["seed"]): float(r["final"]["mean"]) for r in records if r["status"] == FINISHED}
    if not any(finals.values()):
        raise SystemExit(f"no finished candidate run of {algo} on {env} under {folder}")
    stats = iqm_intervals({name: list(v.values()) for name, v in finals.items() if v}, env=env)
    lines = [
        f"| candidate | seeds | final return per seed | below {CARTPOLE_BAR:.0f} | IQM [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for name, values in finals.items():
        if not values:
            continue
        seeds = sorted(values)
        below = sum(values[seed] < CARTPOLE_BAR for seed in seeds) if env == "CartPole-v1" else "-"
        per_seed = ", ".join(f"{seed}: {values[seed]:.1f}" for seed in seeds)
        s = stats[name]
        lines.append(f"| {name} | {len(seeds)} | {per_seed} | {below} | {s['iqm']:.1f} [{s['low']:.1f}, {s['high']:.1f}] |")
    return "\n".join(lines)


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("study", "retrain", "apply", "compare", "baseline"):
        p = sub.add_parser(command)
        p.add_argument("--algo", required=True)
        p.add_argument("--env", required=True)
        p.add_argument("--eval-seeds", type=int, default=3)
        if command == "apply":
            p.add_argument("-n", "--n-timesteps", type=int, default=None, help="the entry's n_timesteps (default: kept)")
            p.add_argument("--repeat", type=int, default=None, help="the R-th repetition of the study (-r<R>)")
            p.add_argument("--note", default="", help="appended to the entry's comment (e.g. how the study was chosen)")
            continue
        p.add_argument("-n", "--n-timesteps", type=int, required=True)
        if command in ("study", "retrain"):
            p.add_argument("--repeat", type=int, default=None, help="the R-th repetition of the study (-r<R>)")
            p.add_argument(
                "--aggregate",
                choices=sorted(AGGREGATES),
                default="iqm",
                help="the trial's value (sb3-pg-zoo's --eval-aggregate; worst_seed: the K final policies' worst mean); "
                "not iqm: the study's name ends with -<aggregate>",
            )
        if command == "study":
            p.add_argument("--trials", type=int, required=True)
        elif command == "compare":
            p.add_argument("--seeds", type=_seeds, default=_seeds("200-202"))
        elif command == "baseline":
            p.add_argument("--seeds", type=_seeds, default=_seeds("300-302"))
        else:
            p.add_argument("--seeds", type=_seeds, default=_seeds("100-104"))
    sub.add_parser("table")
    sub.add_parser("protocol-table", help="every shipped entry against the defaults under the benchmark protocol")
    adopt = sub.add_parser("adopt-defaults", help="replace an entry by the defaults where the protocol says so")
    adopt.add_argument("--algo", required=True)
    adopt.add_argument("--env", required=True)
    candidates = sub.add_parser("candidate-table", help="candidate entries side by side on their selection seeds")
    candidates.add_argument("--algo", required=True)
    candidates.add_argument("--env", required=True)
    args = parser.parse_args()
    if args.command == "study":
        summary = run_study(args.algo, args.env, args.eval_seeds, args.n_timesteps, args.trials, args.repeat, args.aggregate)
        print(json.dumps(summary, indent=1))
    elif args.command == "apply":
        print(apply(args.algo, args.env, args.eval_seeds, args.n_timesteps, args.repeat, args.note))
    elif args.command == "compare":
        print(json.dumps(compare(args.algo, args.env, args.n_timesteps, args.seeds)))
    elif args.command == "baseline":
        print(baseline(args.algo, args.env, args.n_timesteps, args.seeds))
    elif args.command == "protocol-table":
        print(protocol_table())
    elif args.command == "adopt-defaults":
        print(adopt_defaults(args.algo, args.env))
    elif args.command == "candidate-table":
        print(candidate_table(args.algo, args.env))
    elif args.command == "retrain":
        print(retrain(args.algo, args.env, args.eval_seeds, args.n_timesteps, args.seeds, args.repeat, args.aggregate))
    else:
        table()
        print()
        stability_table()
        print()
        compare_table()


if __name__ == "__main__":
    main()
