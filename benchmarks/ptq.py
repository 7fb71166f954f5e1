"""Post-training quantisation on the devkit's real models: cimc against onnxruntime.

    python benchmarks/ptq.py [--models mnist8,magika,...] [--calib 16] [--limit N]
                             [--configs int8-max,int8-mse,...,ort-minmax,...] [--json FILE]

For each kit model (../shared/devkit; build it with make_devkit.sh) the task metric of:
  fp32          onnxruntime on the same (padded) inputs;
  int8-<m>      cimc, int8-sram pipeline (per-channel int8 weights, first/last layer 8-bit),
                activations calibrated with quantize-act method m (max, percentile, mse, entropy);
  int4-<m>      the same with 4-bit weights (int4-sram);
  ...-sq, -bc   with smooth-act (SmoothQuant scales into the weights) and with
                quantize-act{bias-correction=true};
  ...-gq        weights rounded by GPTQ (quantize-weights{rounding=gptq}) instead of to nearest:
                int8-percentile-gq is the int8-sram preset's default pipeline;
  ort-<m>       onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations,
                Conv/MatMul/Gemm, calibration MinMax, Percentile or Entropy.
Every method sees the same calibration feeds: the kit's first ``--calib`` inputs of each model
file (also part of the scored set, as in onnxruntime's and TensorRT's own examples). cimc's
numbers come from the reference interpreter on the compiled graph, which the simulator
reproduces bit for bit (tests/test_devkit.py).

Shapes are static in cimc: ddddocr's images of 95 widths are padded on the right with their
edge column (the white background) to the next multiple of 32, so 6 programs cover them; fp32
and onnxruntime are scored on the same padded images and the kit's unpadded fp32 is printed
beside them. openwakeword's mel front end (a fixed STFT) runs in fp32 everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx
from kit import (
    FRONT_END,
    KIT,
    CimcRunner,
    calibration_feeds,
    check_devkit,
    key,
    manifest,
    pad_width,
)

from cimc.calibration import METHODS

CONFIGS = (
    ["fp32"]
    + [f"int8-{m}" for m in METHODS]
    + ["int8-mse-sq", "int8-mse-bc", "int8-percentile-gq"]
    + [f"int4-{m}" for m in METHODS]
    + ["int4-mse-sq-bc", "int4-percentile-gq"]
    + ["ort-minmax", "ort-percentile", "ort-entropy"]
)


def pipeline(config: str) -> tuple[str, str]:
    """Target and pipeline of a cimc config: int<bits>-<method>[-sq][-bc][-gq] (gq: GPTQ
    weight rounding)."""
    bits, method, *flags = config.split("-")
    smooth = "smooth-act," if "sq" in flags else ""
    correct = ",bias-correction=true" if "bc" in flags else ""
    rounding = ",rounding=gptq" if "gq" in flags else ""
    return f"{bits}-sram", (
        f"fold-bn,{smooth}quantize-weights{{bits={bits[3:]}{rounding}}},"
        f"quantize-act{{method={method}{correct}}}"
    )


def ort_quantized(method: str, calib: dict[str, list[dict]], tmp: Path):
    """onnxruntime quantize_static (QDQ, per-channel) of every model file, then its runner."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    class Reader:
        def __init__(self, feeds):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    done: dict[str, Path] = {}
    for name, feeds in calib.items():
        out = tmp / f"{method}-{name.replace('/', '_')}"
        source = onnx.load(str(KIT / "models" / name))
        if source.opset_import[0].version < 13:  # per-channel QDQ needs opset 13, as users learn
            source = onnx.version_converter.convert_version(source, 13)
        quantize_static(
            source,
            str(out),
            Reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            calibrate_method=calibrate,
        )
        done[name] = out
    return done


def score(kit, name: str, config: str, calib, tmp: Path) -> float:
    ort_run = kit.ort_run()
    padded = pad_width if name == "ddddocr" else (lambda f: f)
    if config == "fp32":
        runner = ort_run
    elif config.startswith("ort-"):
        quantized = ort_quantized(config[4:], calib, tmp)

        def runner(model, feeds):
            return ort_run(quantized[key(model)], feeds)
    else:
        runner = CimcRunner(*pipeline(config), calib)

    def run(model: Path, feeds: dict) -> list:
        feeds = padded(feeds)
        if key(model) in FRONT_END:
            return ort_run(model, feeds)
        return runner(model, feeds)

    return kit.evaluate(name, run=run)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist8,magika,ddddocr,silero_vad,openwakeword")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--calib", type=int, default=16, help="calibration inputs per model file")
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    args = ap.parse_args(argv)
    kit = check_devkit()
    if kit is None:
        return 2
    fp32 = manifest()
    configs = args.configs.split(",")
    results: dict[str, dict[str, float]] = {}
    print(f"{'model':13s} {'kit fp32':>8s} " + " ".join(f"{c:>14s}" for c in configs))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            calib = calibration_feeds(kit, name, args.calib)
            row = results.setdefault(name, {})
            for config in configs:
                t = time.time()
                try:
                    row[config] = score(kit, name, config, calib, Path(tmp))
                except Exception as exc:  # onnxruntime's quantiser fails on some models
                    if not config.startswith("ort-"):
                        raise
                    print(f"  {name} {config}: failed: {type(exc).__name__}: {exc}"[:300])
                    row[config] = float("nan")
                print(f"  {name} {config}: {row[config]:.4f} ({time.time() - t:.0f} s)", flush=True)
            cells = " ".join(f"{row[c]:14.4f}" for c in configs)
            print(f"{name:13s} {fp32[name]['fp32']:8.4f} {cells}", flush=True)
    if args.json:
        from cimc.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
