"""sb3_pg_ext.zoo.hyperparams_files.set_entry: one entry of an rl-zoo3 yml file changes, every other byte stays."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

import sb3_pg_ext
from sb3_pg_ext.zoo.hyperparams_files import set_entry

ALGO_FILES = sorted(sb3_pg_ext.HYPERPARAMS_DIR.glob("*.yml"))

TUNED = {
    "n_envs": 1,
    "n_timesteps": 100000.0,
    "policy": "MlpPolicy",
    "learning_rate": "lin_0.00165109",
    "ent_coef": 1e-05,  # repr "1e-05" has no dot: PyYAML would read it as a string without !!float
    "gamma": 0.978039,
    "max_grad_norm": None,
    "reward_to_go": False,
    "normalize_advantage": True,
    "policy_kwargs": "dict(net_arch=dict(pi=[64], vf=[64]), activation_fn=nn.ReLU)",
    "quoted": "it's 'true'",
    "looks_like_a_number": "1e5",
    "looks_like_a_bool": "yes",
    "big": 1e16,
    "tiny": 2.5e-300,
    "unbounded": float("inf"),
    "env_wrapper": ["gymnasium.wrappers.TimeLimit"],
    "normalize": {"norm_obs": True, "gamma": 0.99},
}
COMMENT = "tuned with `sb3-pg-zoo train -optimize`: 10 trials\n\nsecond paragraph: a # is fine"

SMALL = """\
# header of the file
#
# more header

# hand-set: defaults
default:
  n_timesteps: !!float 1e5
  policy: 'MlpPolicy'

# old comment of CartPole, line 1
# old comment of CartPole, line 2
CartPole-v1:
  n_envs: 1
  n_episodes: 4
  # an indented comment inside the entry
  learning_rate: !!float 1e-3

# a standalone comment between entries

# comment of Pendulum
Pendulum-v1:
  n_timesteps: 100000
  policy: 'MlpPolicy'
"""


def entries_text(text: str) -> dict[str, str]:
    """Each top-level key -> the text of its comment block and entry (for byte comparisons), by hand."""
    blocks: dict[str, str] = {}
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line[:1].strip() and not line.startswith("#"):
            first = i
            while first > 0 and lines[first - 1].startswith("#"):
                first -= 1
            end = i + 1
            while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
                end += 1
            blocks[line.split(":")[0]] = "".join(lines[first:end]).rstrip("\n")
    return blocks


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "algo.yml"
    path.write_text(SMALL)
    return path


def test_replacing_an_entry_keeps_every_other_byte(small: Path) -> None:
    set_entry(small, "CartPole-v1", {"n_envs": 2, "n_episodes": 8}, "new comment\nsecond line")
    text = small.read_text()
    expected = SMALL.replace(
        "# old comment of CartPole, line 1\n# old comment of CartPole, line 2\nCartPole-v1:\n  n_envs: 1\n  n_episodes: 4\n"
        "  # an indented comment inside the entry\n  learning_rate: !!float 1e-3\n",
        "# new comment\n# second line\nCartPole-v1:\n  n_envs: 2\n  n_episodes: 8\n",
    )
    assert expected != SMALL
    assert text == expected


@pytest.mark.parametrize("path", ALGO_FILES, ids=lambda p: p.name)
def test_replacing_an_entry_of_a_shipped_file_leaves_the_others_byte_identical(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    before = path.read_text()
    old = yaml.safe_load(before)
    set_entry(copy, "CartPole-v1", TUNED, COMMENT)
    after = copy.read_text()
    new = yaml.safe_load(after)
    # every other entry, with its comment, is the same text; the file's header too
    old_blocks, new_blocks = entries_text(before), entries_text(after)
    assert list(new_blocks) == list(old_blocks)
    for key in old_blocks:
        if key != "CartPole-v1":
            assert new_blocks[key] == old_blocks[key], key
    assert after.startswith(before[: before.index("\n\n")])
    # the text outside the CartPole-v1 block is unchanged, byte for byte
    head, _, tail = before.partition(old_blocks["CartPole-v1"])
    assert after.startswith(head) and after.endswith(tail)
    # what rl-zoo3 reads: the others unchanged, the new entry exactly as given (lists as lists), in the given order
    assert {k: v for k, v in new.items() if k != "CartPole-v1"} == {k: v for k, v in old.items() if k != "CartPole-v1"}
    assert new["CartPole-v1"] == TUNED
    assert list(new["CartPole-v1"]) == list(TUNED)
    assert all(type(new["CartPole-v1"][k]) is type(v) for k, v in TUNED.items())
    # the comment block right above the entry, the old one gone
    lines = new_blocks["CartPole-v1"].splitlines()
    assert lines[:4] == [
        "# tuned with `sb3-pg-zoo train -optimize`: 10 trials",
        "#",
        "# second paragraph: a # is fine",
        "CartPole-v1:",
    ]


def test_written_floats_read_back_as_the_same_floats(small: Path) -> None:
    values = {f"x{i}": v for i, v in enumerate([1e5, 1e-5, 3.50754e-08, 0.1, 1.0, -2e-7, 1e300, 123456789.125])}
    set_entry(small, "Pendulum-v1", values, "")
    text = small.read_text()
    assert "x1: !!float 1e-05" in text  # where PyYAML would read the plain text as a string
    loaded = yaml.safe_load(text)["Pendulum-v1"]
    assert loaded == values and all(isinstance(v, float) for v in loaded.values())
    assert "# comment of Pendulum" not in text  # an empty comment: no block


def test_appending_a_new_env(small: Path) -> None:
    set_entry(small, "sb3_pg_ext/DigitAdd-v0", {"n_envs": 8, "policy": "MlpPolicy"}, "hand-set")
    text = small.read_text()
    assert text.startswith(SMALL)
    assert text[len(SMALL) :] == "\n# hand-set\nsb3_pg_ext/DigitAdd-v0:\n  n_envs: 8\n  policy: 'MlpPolicy'\n"
    assert yaml.safe_load(text)["sb3_pg_ext/DigitAdd-v0"] == {"n_envs": 8, "policy": "MlpPolicy"}
    # a file without a final newline gets one before the new entry
    small.write_text(SMALL.rstrip("\n"))
    set_entry(small, "Acrobot-v1", {"n_envs": 1}, "x")
    assert small.read_text() == SMALL + "\n# x\nAcrobot-v1:\n  n_envs: 1\n"


def test_a_failing_write_leaves_the_old_file_intact(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mode = 0o640
    small.chmod(mode)

    def fail(*args: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="disk full"):
            set_entry(small, "CartPole-v1", {"n_envs": 2}, "new")
    assert small.read_text() == SMALL
    assert sorted(p.name for p in small.parent.iterdir()) == ["algo.yml"]  # no temporary file left behind
    # and a write that goes through keeps the file's permissions
    set_entry(small, "CartPole-v1", {"n_envs": 2}, "new")
    assert small.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize(
    "text",
    [
        "- a list\n- of things\n",
        "just a string\n",
        "CartPole-v1: [unclosed\n",
        "default:\n  n_envs: 1\n---\nother: 1\n",
    ],
    ids=["list", "scalar", "not-yaml", "two-documents"],
)
def test_a_file_that_is_not_a_mapping_of_entries_is_refused_by_name(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.yml"):
        set_entry(path, "CartPole-v1", {"n_envs": 1}, "c")
    assert path.read_text() == text


def test_an_empty_file_gets_its_first_entry(tmp_path: Path) -> None:
    path = tmp_path / "new.yml"
    path.write_text("")
    set_entry(path, "CartPole-v1", {"n_envs": 1}, "")
    assert path.read_text() == "CartPole-v1:\n  n_envs: 1\n"
