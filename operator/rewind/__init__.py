"""Rewind: roll a broken production system back to a known-good state, on Kubernetes."""

__version__ = "0.1.0"
