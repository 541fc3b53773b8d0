"""
Token-generation environments: the language-model MDP on digit-string tasks.

State = the prompt tokens plus the tokens generated so far; action = the next token, from a vocabulary of the ten
digits and EOS; transition = append the token (deterministic); reward = a verifier's grade of the finished answer,
given once, when EOS is chosen or the answer slots are full (both terminal; the second is marked by
``info["length_limit"]``), and 0 before.

Observation: a fixed-size ``MultiDiscrete`` array ``[prompt slots | answer slots | position]``:

- prompt slots (``prompt_length``): the prompt's tokens, right-aligned and left-padded with PAD, as a
  left-padded language-model batch lays out its prompts (the prompt's last token is always in the last slot);
- answer slots (``answer_length``): the tokens generated so far, then PAD;
- position: the number of tokens generated so far (0 .. ``answer_length``).

So an MLP sees a fixed layout (SB3's ``MlpPolicy`` one-hot encodes every entry) and a sequence model sees token ids
plus a position.

The prompt is drawn from the env's RNG right after ``reset(seed=...)``: one seed, one prompt, so a GRPO group whose
episodes are reset with the same seed shares its prompt. ``n_prompts`` says how many distinct prompts exist.

This module imports gymnasium and numpy only; it knows nothing of the algorithms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Token ids: the digits 0-9 are their own ids.
EOS = 10
PLUS = 11
PAD = 12
N_TOKENS = 13
#: Actions: a digit or EOS.
N_ACTIONS = 11
_TOKEN_TEXT = {EOS: "<eos>", PLUS: "+", PAD: "_"}

REWARD_MODES = ("partial", "binary")
#: Colour of each token id in ``rgb_array`` renders (digits from dark to light green, EOS red, PLUS blue, PAD black).
_PALETTE = np.array(
    [[0, 60 + 19 * d, 0] for d in range(10)] + [[220, 40, 40], [40, 80, 220], [0, 0, 0]],
    dtype=np.uint8,
)
_CELL = 16


def grade(answer: list[int], target: list[int], reward_mode: str) -> tuple[float, bool]:
    """
    The verifier: grade a finished answer against the target (both without EOS).

    The expected output is ``target + [EOS]`` (n + 1 positions). ``"partial"``: the fraction of those n + 1 positions
    the generated tokens match (the EOS position counted, so only an exact answer scores 1.0); ``"binary"``: 1.0 for
    an exact answer, else 0.

    :param answer: the generated tokens, including the final EOS if one was generated
    :param target: the correct answer's digits
    :param reward_mode: ``"partial"`` or ``"binary"``
    :return: (reward, exact match)
    """
    expected = [*target, EOS]
    exact = answer == expected
    if reward_mode == "binary":
        return float(exact), exact
    matches = sum(1 for k, token in enumerate(expected) if k < len(answer) and answer[k] == token)
    return matches / len(expected), exact


class DigitTaskEnv(gym.Env[np.ndarray, np.int64]):
    """
    Base class of the digit-string tasks: subclasses define the prompt, the target and the slot sizes.

    :param min_digits: shortest operand (digits)
    :param max_digits: longest operand (digits)
    :param reward_mode: ``"partial"`` (default: fraction of answer positions right, EOS position counted) or
        ``"binary"`` (1.0 for an exact answer, else 0)
    :param render_mode: ``"ansi"`` (the prompt and the answer as text), ``"rgb_array"`` (an image of the slots,
        what ``make_vec_env`` asks for) or ``"human"`` (prints the text)

    The episode ends when EOS is chosen or when the answer slots are full without EOS (the length limit); both
    return ``terminated=True`` (the answer is graded; nothing follows) and never ``truncated``, with
    ``info["length_limit"]`` telling them apart (GRPO's ``mask_truncated`` leaves length-limited answers out).
    """

    metadata = {"render_modes": ["ansi", "human", "rgb_array"], "render_fps": 4}

    def __init__(self, min_digits: int = 3, max_digits: int = 4, reward_mode: str = "partial", render_mode: str | None = None):
        if not (isinstance(min_digits, int) and isinstance(max_digits, int) and 1 <= min_digits <= max_digits):
            raise ValueError(
                f"Need integers 1 <= min_digits <= max_digits; got min_digits={min_digits}, max_digits={max_digits}"
            )
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"`reward_mode` must be one of {', '.join(map(repr, REWARD_MODES))}; got {reward_mode!r}")
        self.min_digits = min_digits
        self.max_digits = max_digits
        self.reward_mode = reward_mode
        self.render_mode = render_mode
        self._version = 0  # counts resets and steps: the state a "human" print shows
        self._printed_version = -1
        self.prompt_length = self._prompt_length(max_digits)
        #: Room for the longest answer plus its EOS.
        self.answer_length = self._target_length(max_digits) + 1
        self.observation_space = spaces.MultiDiscrete(
            [N_TOKENS] * (self.prompt_length + self.answer_length) + [self.answer_length + 1], dtype=np.int64
        )
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._prompt: list[int] = []
        self._target: list[int] = []
        self._answer: list[int] = []

    # -- what a task defines --------------------------------------------------------------------------------------

    @staticmethod
    def _prompt_length(max_digits: int) -> int:
        raise NotImplementedError

    @staticmethod
    def _target_length(max_digits: int) -> int:
        raise NotImplementedError

    def _sample_task(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Draw (prompt tokens, target digits)."""
        raise NotImplementedError

    @property
    def n_prompts(self) -> int:
        """Number of distinct prompts the env can draw."""
        raise NotImplementedError

    # -- the MDP ----------------------------------------------------------------------------------------------------

    def _observation(self) -> np.ndarray:
        obs = np.full(self.prompt_length + self.answer_length + 1, PAD, dtype=np.int64)
        obs[self.prompt_length - len(self._prompt) : self.prompt_length] = self._prompt
        obs[self.prompt_length : self.prompt_length + len(self._answer)] = self._answer
        obs[-1] = len(self._answer)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._prompt, self._target = self._sample_task(self.np_random)
        self._answer = []
        self._version += 1
        if self.render_mode == "human":
            self._print_once()
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._prompt:
            raise RuntimeError("Call reset() before step()")
        token = int(action)
        if not 0 <= token < N_ACTIONS:
            raise ValueError(f"Invalid action {action!r}: actions are digits 0-9 and EOS ({EOS})")
        if len(self._answer) >= self.answer_length or (self._answer and self._answer[-1] == EOS):
            raise RuntimeError("The episode is over: call reset()")
        self._answer.append(token)
        # EOS ends the answer; so do full answer slots without EOS (the length limit). Both are terminal: the answer
        # is graded and nothing follows, so a critic must not bootstrap V(s_T) (which ``truncated`` would ask for).
        length_limit = token != EOS and len(self._answer) == self.answer_length
        terminated = token == EOS or length_limit
        reward, info = 0.0, {}
        if terminated:
            reward, exact = grade(self._answer, self._target, self.reward_mode)
            info = {
                "is_success": exact,
                "length_limit": length_limit,
                "target": list(self._target),
                "answer": list(self._answer),
            }
        self._version += 1
        if self.render_mode == "human":
            self._print_once()
        return self._observation(), reward, terminated, False, info

    def _print_once(self) -> None:
        """Print the text of the current state unless it was already printed (step() prints it; a render() call
        after it, as rl-zoo3's enjoy makes, must not print it again)."""
        if self._printed_version != self._version:
            print(self._text())
            self._printed_version = self._version

    def _text(self) -> str:
        prompt = "".join(_TOKEN_TEXT.get(t, str(t)) for t in self._prompt)
        return f"{prompt} -> {''.join(_TOKEN_TEXT.get(t, str(t)) for t in self._answer)}"

    def _image(self) -> np.ndarray:
        """Two rows of cells, prompt slots then answer slots, each cell coloured by its token id (PAD: black)."""
        obs = self._observation()
        rows = [obs[: self.prompt_length], obs[self.prompt_length : self.prompt_length + self.answer_length]]
        width = max(self.prompt_length, self.answer_length)
        grid = np.full((2, width), PAD, dtype=np.int64)
        for row, tokens in enumerate(rows):
            grid[row, : len(tokens)] = tokens
        cells = _PALETTE[grid]  # (2, width, 3)
        return np.repeat(np.repeat(cells, _CELL, axis=0), _CELL, axis=1)

    def render(self) -> str | np.ndarray | None:
        """
        ``"ansi"``: the prompt and the answer as text (``"3 2 1 -> 1 2 3 <eos>"`` without spaces); ``"rgb_array"``:
        an image of the prompt and answer slots, one colour per token id; ``"human"``: prints the text, which
        ``reset()`` and ``step()`` already do in that mode (gymnasium's convention), so a state is printed once
        however often ``render()`` is called; None: nothing.
        """
        if self.render_mode == "ansi":
            return self._text()
        if self.render_mode == "rgb_array":
            return self._image()
        if self.render_mode == "human":
            self._print_once()
        return None


class DigitReverseEnv(DigitTaskEnv):
    """
    Reverse a digit string: prompt ``d_1 .. d_n`` (n uniform in [min_digits, max_digits], digits uniform, leading
    zeros allowed), answer ``d_n .. d_1 EOS``. ``sum_n 10^n`` distinct prompts (11,000 for 3-4 digits).
    """

    @staticmethod
    def _prompt_length(max_digits: int) -> int:
        return max_digits

    @staticmethod
    def _target_length(max_digits: int) -> int:
        return max_digits

    def _sample_task(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        n = int(rng.integers(self.min_digits, self.max_digits + 1))
        digits = [int(d) for d in rng.integers(0, 10, size=n)]
        return digits, digits[::-1]

    @property
    def n_prompts(self) -> int:
        return sum(10**n for n in range(self.min_digits, self.max_digits + 1))


class DigitAddEnv(DigitTaskEnv):
    """
    Add two n-digit numbers: prompt ``a_1 .. a_n + b_1 .. b_n`` (n uniform in [min_digits, max_digits], a and b
    uniform in [0, 10^n), written with n digits), answer the n + 1 digits of a + b (zero-padded) then EOS.
    ``sum_n 10^(2n)`` distinct prompts (10,100 for 1-2 digits).
    """

    def __init__(self, min_digits: int = 1, max_digits: int = 2, reward_mode: str = "partial", render_mode: str | None = None):
        super().__init__(min_digits, max_digits, reward_mode, render_mode)

    @staticmethod
    def _prompt_length(max_digits: int) -> int:
        return 2 * max_digits + 1

    @staticmethod
    def _target_length(max_digits: int) -> int:
        return max_digits + 1

    def _sample_task(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        n = int(rng.integers(self.min_digits, self.max_digits + 1))
        a, b = (int(x) for x in rng.integers(0, 10**n, size=2))

        def digits(value: int, width: int) -> list[int]:
            return [int(c) for c in str(value).zfill(width)]

        return [*digits(a, n), PLUS, *digits(b, n)], digits(a + b, n + 1)

    @property
    def n_prompts(self) -> int:
        return sum(10 ** (2 * n) for n in range(self.min_digits, self.max_digits + 1))


def success_rate(
    predict: Callable[[np.ndarray], Any],
    env: DigitTaskEnv | gym.Env,
    seeds: Iterable[int],
) -> float:
    """
    Fraction of exact answers when each episode is reset with one of ``seeds`` (one prompt per seed).

    :param predict: maps a batch of observations ``(n, obs_dim)`` to actions (e.g. a greedy
        ``lambda obs: model.predict(obs, deterministic=True)[0]``)
    :param env: a token-task env (wrappers allowed)
    :param seeds: reset seeds; use seeds disjoint from the training seeds
    :return: success rate in [0, 1]
    """
    successes, n = 0, 0
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        done, info = False, {}
        while not done:
            action = np.asarray(predict(obs[None])).reshape(-1)[0]
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated  # truncated: only from a wrapper's time limit
        successes += int(bool(info.get("is_success", False)))
        n += 1
    if n == 0:
        raise ValueError("success_rate needs at least one seed")
    return successes / n
