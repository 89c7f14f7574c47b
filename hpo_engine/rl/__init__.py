"""RL pieces of HPO: the hierarchical reward and the clipped policy-gradient loss (pure functions)."""

from .loss import policy_loss
from .reward import DEFAULT_QUALITY_THRESHOLD, GRANULARITIES, group_zscore, hierarchical_reward

__all__ = ["hierarchical_reward", "group_zscore", "policy_loss", "GRANULARITIES", "DEFAULT_QUALITY_THRESHOLD"]
