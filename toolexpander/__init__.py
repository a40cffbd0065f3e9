"""toolexpander: a distributed GRPO trainer that teaches small LLMs to call tools."""

__version__ = "0.1.0"
