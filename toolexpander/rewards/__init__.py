"""Rewards (pure): parse a completion in the target format and score it as a RewardVector.

Public: score / score_batch (completion text + Task -> RewardVector), score_group (also the
completions whose scoring raised), parse_completion, render_*.
"""

from toolexpander.rewards.parse import ParsedCompletion, parse_completion, render_answer, render_call
from toolexpander.rewards.score import ZERO, GroupScore, RewardVector, score, score_batch, score_group

__all__ = [
    "RewardVector", "GroupScore", "score", "score_batch", "score_group", "render_answer", "render_call",
    "parse_completion", "ParsedCompletion", "ZERO",
]
