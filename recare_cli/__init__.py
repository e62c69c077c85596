"""recare: concept unlearning for text-to-image diffusion models that keeps what co-occurs (ReCARE)."""

__version__ = "0.1.0"
