"""fewshot: a command-line experiment runner for optimization-based few-shot meta-learning."""

__version__ = "0.1.0"
