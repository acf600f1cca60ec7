"""Test-only stand-in for Intel Gaudi's ``habana_frameworks`` package (never shipped, never on a real path).

Tests put ``tests/stubs`` on ``sys.path`` (``PYTHONPATH`` for scripts) to run every HPU branch of the toolkit on
any machine. The stand-in records each call a Gaudi run makes into the runtime (``_standin.RECORDS``, and the
file ``HABANA_STANDIN_LOG`` names), and computes on the CPU: torch has no ``hpu`` device here, so
:mod:`habana_frameworks.torch.hpu` points the toolkit's HPU ``torch.device`` at the CPU when it is imported.
transformers and accelerate look for ``torch.hpu``, which the stand-in does not add, so their Trainer and
Accelerator run on the CPU as well.
"""
