"""Likeness: consistent AI characters from one reference photo."""

__version__ = "0.1.0"
