"""Evaluation: exact log-likelihood scoring of answer options (classification / multiple-choice accuracy)."""

from fedlora.evaluation.scoring import classification_accuracy, option_logprobs

__all__ = ["classification_accuracy", "option_logprobs"]
