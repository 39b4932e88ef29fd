"""Benchmarks of fxpass: scripts that measure and print tables, never timed assertions.

Run ``python -m benchmarks`` from the repository root (``--help`` for the options); the method
and the latest results are in ``docs/performance.md``.
"""

__all__: list[str] = []
