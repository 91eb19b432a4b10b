"""Containers: validated readers that need no torch, streaming writers, atomic file ops."""
