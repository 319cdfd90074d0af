"""Preloaded by the workers' fork server when the model has a text tower: transformers' tokenizer classes,
imported without torch, so that every worker forked from the server has them already instead of spending
~1.5 s importing them after the model is ready. Importing this module switches torch off for transformers
in the importing process (the fork server, and the workers it forks), which is its only use."""

from iei.models import transformers_without_torch

transformers_without_torch()

from transformers import AutoTokenizer  # noqa: E402,F401  (the import is the point)
