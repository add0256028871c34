"""Benchmarks of the pagent sync engine against what users would otherwise write (issue 5).

Run ``python -m benchmarks`` (or ``--quick``); see ``benchmarks/README.md``.
"""
