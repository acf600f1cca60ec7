"""Test-only stand-in for Intel Gaudi's ``habana_frameworks`` package (never shipped, never on a real path).

Tests put ``tests/stubs`` on ``sys.path`` to exercise the HPU branch of :mod:`rlhfkit.device` on any machine.
"""
