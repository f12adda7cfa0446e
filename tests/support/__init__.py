"""Helpers shared by several test modules, one module per concern (tests import these, never each other)."""
