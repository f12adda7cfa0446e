"""Benchmarks: guestqueue against a bare relay and Gradio's queue, side by side.

Run ``python -m bench run SCENARIO`` (see ``python -m bench --help`` and
docs/benchmarks.md). Every server runs as its own process on loopback, the load
comes from another process, and CPU and memory are read from ``/proc``.
"""
