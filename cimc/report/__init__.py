"""Reporting: what the commands print, plot and measure about graphs, programs and results.

``layers`` (per-layer summary; views of simulated layers: unit-kind labels, top layers, tile vs
simulated cycles), ``bits`` (storage accounting), ``compare`` (programs side by side with ratios),
``tables`` (rich tables), ``disasm`` (program text), ``fidelity`` (agreement with onnxruntime
fp32) and ``plot`` (matplotlib, imported only by ``cimc run --plot``).
"""
