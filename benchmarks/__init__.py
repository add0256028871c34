"""Benchmarks of the pagent sync engine against what users would otherwise write (issues 5 and 13).

Run ``python -m benchmarks`` (or ``--quick``); see ``benchmarks/README.md``.
"""
