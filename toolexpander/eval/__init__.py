"""Evaluation suites: BFCL (scored by BFCL's own AST checker), ToolRL test, ACEBench (our reward).

`runner.run_eval` is the entry point; `bfcl` loads, decodes and scores BFCL. EvalError = bad input.
"""


class EvalError(ValueError):
    """Bad evaluation input (suite, category, model directory); the CLI prints it as one line."""
