"""Rewards (pure): parse a completion in the target format and score it as a RewardVector.

Public: score / score_batch (completion text + Task -> RewardVector), parse_completion, render_*.
"""

from toolexpander.rewards.parse import ParsedCompletion, parse_completion, render_answer, render_call
from toolexpander.rewards.score import ZERO, RewardVector, score, score_batch

__all__ = [
    "RewardVector", "score", "score_batch", "render_answer", "render_call", "parse_completion",
    "ParsedCompletion", "ZERO",
]
