"""
Features extractor for token tasks (``sb3_pg_ext.envs``): observations ``[token ids ... | position]`` as a
``MultiDiscrete`` array, the last entry the position.

SB3 one-hot encodes ``MultiDiscrete`` observations before any extractor sees them; the extractor multiplies each
slot's one-hot vector by an embedding matrix, which is exactly an embedding lookup, so it works unchanged inside
SB3's policies (``predict``, save/load, VecEnvs).
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_pg_ext.common.policies import ActorPolicy

TOKEN_ARCHITECTURES = ("mlp", "transformer")


class TokenExtractor(BaseFeaturesExtractor):
    """
    Token embedding + slot embedding, then either a flat concatenation (``"mlp"``: the policy's MLP reads every
    slot) or a tiny transformer encoder (``"transformer"``: a cursor token, embedded from the position, attends
    over the slots; its output is the feature vector).

    :param observation_space: ``MultiDiscrete([V] * L + [P])``: L token slots over a vocabulary of V ids, then the
        position (P values)
    :param embed_dim: embedding width d
    :param architecture: ``"mlp"`` (features: ``(L + 1) * d``) or ``"transformer"`` (features: ``d``)
    :param n_layers: transformer layers
    :param n_heads: attention heads (must divide ``embed_dim``)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        embed_dim: int = 16,
        architecture: str = "mlp",
        n_layers: int = 2,
        n_heads: int = 4,
    ):
        if not isinstance(observation_space, spaces.MultiDiscrete) or observation_space.nvec.ndim != 1:
            raise ValueError(f"TokenExtractor needs a 1-D MultiDiscrete observation space; got {observation_space}")
        nvec = [int(n) for n in observation_space.nvec]
        if len(nvec) < 2 or len(set(nvec[:-1])) != 1:
            raise ValueError(f"TokenExtractor needs MultiDiscrete([V] * L + [P]) (token slots, then position); got {nvec}")
        if architecture not in TOKEN_ARCHITECTURES:
            accepted = ", ".join(map(repr, TOKEN_ARCHITECTURES))
            raise ValueError(f"`architecture` must be one of {accepted}; got {architecture!r}")
        n_slots, vocab_size, n_positions = len(nvec) - 1, nvec[0], nvec[-1]
        features_dim = (n_slots + 1) * embed_dim if architecture == "mlp" else embed_dim
        super().__init__(observation_space, features_dim)
        self.n_slots, self.vocab_size, self.n_positions = n_slots, vocab_size, n_positions
        self.architecture = architecture
        self.token_embedding = nn.Parameter(th.randn(vocab_size, embed_dim) * 0.5)
        self.slot_embedding = nn.Parameter(th.randn(n_slots, embed_dim) * 0.5)
        self.position_embedding = nn.Parameter(th.randn(n_positions, embed_dim) * 0.5)
        self.encoder: nn.TransformerEncoder | None = None
        if architecture == "transformer":
            layer = nn.TransformerEncoderLayer(
                embed_dim, n_heads, dim_feedforward=4 * embed_dim, dropout=0.0, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        # observations: (B, L * V + P), the concatenated one-hot encodings SB3 made of the ids.
        batch = observations.shape[0]
        token_one_hot = observations[:, : self.n_slots * self.vocab_size].reshape(batch, self.n_slots, self.vocab_size)
        tokens = token_one_hot @ self.token_embedding + self.slot_embedding  # (B, L, d)
        cursor = observations[:, self.n_slots * self.vocab_size :] @ self.position_embedding  # (B, d)
        if self.encoder is None:
            return th.cat([tokens.reshape(batch, -1), cursor], dim=1)
        encoded = self.encoder(th.cat([cursor.unsqueeze(1), tokens], dim=1))
        return encoded[:, 0]


class TokenPolicy(ActorPolicy):
    """
    :class:`~sb3_pg_ext.common.policies.ActorPolicy` for the token tasks of ``sb3_pg_ext.envs``: a
    :class:`TokenExtractor` (token + slot embeddings, then a flat MLP or a tiny
    transformer, chosen by ``features_extractor_kwargs=dict(architecture=...)``) and a ReLU MLP of ``[128, 128]``.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = TokenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            [128, 128] if net_arch is None else net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )


__all__ = ["TOKEN_ARCHITECTURES", "TokenExtractor", "TokenPolicy"]
