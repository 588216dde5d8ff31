"""distill: reproducible, notebook-first knowledge distillation of language models."""

__version__ = "0.1.0"
