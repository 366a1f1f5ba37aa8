"""Resume: rebuild a process from an image (see run.py for the sequence)."""

from .run import ResumeOptions, Resumed, resume

__all__ = ["ResumeOptions", "Resumed", "resume"]
