"""Is the hardware model consistent with itself and with published macros?

For every zoo model on every preset: the cycles ``tile`` chose each layer's mapping by against
the layer's simulated cycles (worst ratio over layers), total cycles, energy per MAC in pJ beside
the span published SRAM-CiM macros cover (0.02-1.3 pJ per MAC, as tabulated in AccelForge's macro
library), and the macro-level TOPS/W and TOPS/mm^2 the model implies (arrays' energy and area
only, 2 ops per MAC, at the model's own bit widths) beside the figure of the macro the CiM energy
constant cites (Chih et al., ISSCC 2021: 89 TOPS/W at 4b x 4b).

    python benchmarks/model_consistency.py [--size 64] [--models resnet18 ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

from cimc.targets.params import presets  # noqa: E402

import cimc  # noqa: E402
from cimc.cim_ops import CIM_OPS  # noqa: E402
from cimc.models import export_onnx  # noqa: E402
from cimc.report.layers import summarize  # noqa: E402

PUBLISHED_PJ_PER_MAC = (0.02, 1.3)
CHIH_TOPS_W = 89.0


def measure(model: str, size: int, preset: str, folder: Path) -> dict:
    path = folder / f"{model}_{size}.onnx"
    if not path.exists():
        export_onnx(model, path, image_size=size, seed=0)
    start = time.perf_counter()
    program = cimc.compile(str(path), target=preset, calibration=2)
    compile_s = time.perf_counter() - start
    result = cimc.simulate(program, functional=False)
    simulated = result.layer_cycles
    ratios = [
        simulated[n.name] / n.meta["mapping"]["modelled_cycles"]
        for n in program.graph.nodes()
        if n.op in CIM_OPS
    ]
    worst = max(ratios, key=lambda r: abs(r - 1.0))
    rows = summarize(cimc.import_onnx(str(path)))["layers"]
    macs = sum(row["macs"] for row in rows)
    cim_macs = sum(row["macs"] for row in rows if row["unit"] == "cim")
    target = program.target
    seconds = result.latency_s
    array_pj = result.energy_breakdown["arrays"]
    array_area = (
        result.area_used_breakdown["cim_arrays"] + result.area_used_breakdown["pool_arrays"]
    )
    return {
        "model": model,
        "preset": preset,
        "compile_s": compile_s,
        "cycles": result.cycles,
        "worst_layer_ratio": worst,
        "pj_per_mac": result.energy_pj / macs,
        "macro_tops_per_w": 2 * cim_macs / array_pj if array_pj else float("nan"),
        "macro_tops_per_mm2": 2 * cim_macs / seconds / 1e12 / array_area,
        "bits": target.weight_bits if target.macro == "int" else 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="image size (224 is the published one)")
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenetv3_large"])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for preset in sorted(presets()):
                rows.append(measure(model, args.size, preset, Path(tmp)))
                r = rows[-1]
                print(
                    f"{model:18s} {preset:13s} cycles {r['cycles']:>11,}  worst layer sim/tile "
                    f"{r['worst_layer_ratio']:.3f}  {r['pj_per_mac']:.3f} pJ/MAC "
                    f"(published {PUBLISHED_PJ_PER_MAC[0]}-{PUBLISHED_PJ_PER_MAC[1]})  macro "
                    f"{r['macro_tops_per_w']:.1f} TOPS/W (Chih 2021: {CHIH_TOPS_W} at 4b), "
                    f"{r['macro_tops_per_mm2']:.2f} TOPS/mm^2  compile {r['compile_s']:.1f} s",
                    flush=True,
                )
    worst = max((r["worst_layer_ratio"] for r in rows), key=lambda x: abs(x - 1))
    print(f"worst layer ratio over all: {worst:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
