"""
Tuning one study from several worker processes (docs/zoo.md, "Tuning on one machine or many"): two
``sb3-pg-zoo train -optimize`` processes share a journal file, then a real PostgreSQL server; both workers' trials
must land in the one study.

The PostgreSQL test starts its own server (``initdb`` + ``pg_ctl start`` in a temporary folder, on a free local
port, trust authentication on localhost only) and stops it afterwards. It skips only when no PostgreSQL binaries
exist (Debian/Ubuntu: ``apt-get install -y postgresql``; ``initdb`` and ``pg_ctl`` live in
``/usr/lib/postgresql/<version>/bin``, not on PATH). ``initdb`` refuses to run as root: as root, the server runs as
the ``postgres`` system user that the Debian package creates (``runuser -u postgres --``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

WORKER = [sys.executable, "-m", "sb3_pg_ext.zoo", "train", "--algo", "reinforce", "--env", "CartPole-v1"]
WORKER += ["-n", "200", "-optimize", "--n-trials", "1", "--n-evaluations", "1", "--eval-episodes", "2"]
WORKER += ["--no-optim-plots", "--verbose", "0", "--pruner", "none"]  # a pruned trial is still a trial; keep the check exact


def run_two_workers(tmp_path: Path, storage: str, study_name: str) -> dict[str, set[int]]:
    """Start two workers on one study at once; return, per worker, the numbers of the trials it ran (from the
    per-trial folders that ``--optimization-log-path`` names after the trial number)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    workers = {}
    for name, seed in (("a", "1"), ("b", "2")):
        command = [*WORKER, "--storage", storage, "--study-name", study_name, "--seed", seed]
        command += ["-f", str(tmp_path / f"logs_{name}"), "--optimization-log-path", str(tmp_path / f"trials_{name}")]
        workers[name] = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trials = {}
    for name, process in workers.items():
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, out.decode()[-3000:]
        trials[name] = {int(p.name.split("_")[1]) for p in (tmp_path / f"trials_{name}").glob("trial_*")}
    return trials


def assert_one_study_holds_both_workers_trials(storage: str | optuna.storages.BaseStorage, study_name: str, trials):
    summaries = optuna.get_all_study_summaries(storage)
    assert [s.study_name for s in summaries] == [study_name]
    study = optuna.load_study(study_name=study_name, storage=storage)
    numbers = {t.number for t in study.trials}
    assert trials["a"] and trials["b"], trials
    assert trials["a"].isdisjoint(trials["b"]) and trials["a"] | trials["b"] == numbers == {0, 1}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_two_workers_share_a_journal_file(tmp_path):
    storage = str(tmp_path / "studies" / "reinforce.log")
    trials = run_two_workers(tmp_path, storage, "journal-shared")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    assert_one_study_holds_both_workers_trials(journal, "journal-shared", trials)


# -- PostgreSQL --------------------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path:
        # Debian links initdb/pg_ctl onto PATH in some images: the real folder holds the rest
        real = Path(on_path).resolve().parent
        if (real / "pg_ctl").exists():
            return real
    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versioned[-1]).parent if versioned else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server with an empty database ``optuna``; yields its SQLAlchemy URL."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl); CI installs them: apt-get install -y postgresql")
    try:
        import psycopg2
    except ImportError:
        pytest.fail("PostgreSQL is installed but its driver is not: pip install -e '.[dev]' (or the postgres extra)")
    base = Path(tempfile.mkdtemp(prefix="sb3-pg-ext-postgres-"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root; Debian's package creates the `postgres` system user
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        subprocess.run(
            [*as_server_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "zoo", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_server_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(base / "server.log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=port, user="zoo", dbname="postgres")
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE optuna")
            connection.close()
            yield f"postgresql+psycopg2://zoo@127.0.0.1:{port}/optuna"
        finally:
            subprocess.run(
                [*as_server_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
            )
    except subprocess.CalledProcessError as e:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {e.cmd}\n{e.stdout!r}\n{e.stderr!r}\n{log}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, postgres_url):
    # create the schema and the study once, before the workers (docs/zoo.md): two processes creating the
    # tables of a fresh database at the same moment can collide
    optuna.create_study(storage=postgres_url, study_name="postgres-shared", direction="maximize")
    started = time.monotonic()
    trials = run_two_workers(tmp_path, postgres_url, "postgres-shared")
    assert time.monotonic() - started < 600
    assert_one_study_holds_both_workers_trials(postgres_url, "postgres-shared", trials)
