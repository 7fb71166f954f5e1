"""Reporting: what the commands print, plot and measure about graphs, programs and results.

``layers`` (per-layer summary and busy cycles), ``bits`` (storage accounting), ``tables``
(rich tables), ``disasm`` (program text), ``fidelity`` (agreement with onnxruntime fp32) and
``plot`` (matplotlib, imported only by ``cimc run --plot``).
"""
