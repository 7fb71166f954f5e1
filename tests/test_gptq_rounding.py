"""quantize-weights{rounding=gptq}: error-compensated rounding on the same per-channel grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_recurrent import feeds_of
from test_shared_weights import CALIBRATION, DIRS, SEQ, lstm, mappings, simulate_checked

import cimc
from cimc.cim_ops import QUANT_OP
from cimc.compress import quantize_per_channel
from cimc.compress.quantize import determined
from cimc.errors import PassError
from cimc.pass_manager import parse_pipeline, run_pipeline
from cimc.passes_base import PassContext
from cimc.program import to_bytes

DATA = Path(cimc.__file__).parent / "data"
BATCH = 8


def digits_program(rounding: str, bits: int = 4) -> cimc.Program:
    """The bundled digits CNN on int4-sram, calibrated on its bundled calibration split."""
    with np.load(DATA / "digits_calib.npz") as npz:
        calib = [{"input": npz["input"][i : i + BATCH]} for i in range(0, 64, BATCH)]
    return cimc.compile(
        DATA / "digits_cnn.onnx",
        target="int4-sram",
        input_shapes={"input": (BATCH, 1, 16, 16)},
        pipeline=f"fold-bn,quantize-weights{{bits={bits},rounding={rounding}}},quantize-act",
        calibration=calib,
    )


def held_out_logits(graph: cimc.Graph) -> np.ndarray:
    with np.load(DATA / "digits_test.npz") as npz:
        x = npz["input"]
    return np.concatenate(
        [
            next(iter(cimc.interpret(graph, {"input": x[i : i + BATCH]}).values()))
            for i in range(0, len(x), BATCH)
        ]
    )


def quant_layers(program: cimc.Program) -> dict[str, dict]:
    g = program.graph
    return {
        n.name: {
            "wq": g.values[n.inputs[1]].data,
            "wscale": g.values[n.inputs[2]].data,
            "bits": n.meta["compression"]["bits"],
        }
        for n in g.nodes()
        if n.op == QUANT_OP
    }


def test_gptq_halves_the_held_out_logit_error_of_int4_digits():
    """On images the calibration never saw, the compiled int4 model's logits are closer to the
    float model's with GPTQ rounding (measured: relative error 0.172 nearest, 0.087 gptq; the
    bound 0.75x leaves room for BLAS differences between machines) on the same grid."""
    ref = held_out_logits(cimc.import_onnx(DATA / "digits_cnn.onnx", {"input": (BATCH, 1, 16, 16)}))
    nearest, gptq = digits_program("nearest"), digits_program("gptq")
    err = {
        name: np.linalg.norm(held_out_logits(p.graph) - ref) / np.linalg.norm(ref)
        for name, p in (("nearest", nearest), ("gptq", gptq))
    }
    assert err["gptq"] < 0.75 * err["nearest"], err
    a, b = quant_layers(nearest), quant_layers(gptq)
    assert a.keys() == b.keys()
    changed = 0
    for name in a:  # the same grid: scales equal, integers in range; only the rounding moved
        assert np.array_equal(a[name]["wscale"], b[name]["wscale"]), name
        assert np.abs(b[name]["wq"].astype(int)).max() <= 2 ** (b[name]["bits"] - 1) - 1, name
        changed += int(not np.array_equal(a[name]["wq"], b[name]["wq"]))
    assert changed >= 2  # the 8-bit edge layers may round alike; the 4-bit ones do not


def test_gptq_is_deterministic():
    assert to_bytes(digits_program("gptq")) == to_bytes(digits_program("gptq"))


def test_gptq_minimises_the_output_error_it_is_given():
    """On correlated inputs (the case compensation exists for) the layer's output error on
    the data that gave H is lower than rounding to nearest, at 8 and at 4 bits."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 64)) @ rng.standard_normal((64, 64))
    w = rng.standard_normal((32, 64))
    for bits in (8, 4):
        errs = []
        for h in (None, (x.T @ x)[None]):
            q, scale = quantize_per_channel(w, bits, h)
            errs.append(np.linalg.norm(x @ (w - q * scale[:, None]).T))
        assert errs[1] < 0.85 * errs[0], (bits, errs)  # measured 0.72-0.73x


def test_too_few_calibration_rows_round_to_nearest():
    """A head fed fewer independent rows than its row length: H is singular, the compensation
    would fit the calibration set, so the group rounds to nearest (identical integers)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 64))
    w = rng.standard_normal((16, 64))
    h = (x.T @ x)[None]
    assert not determined(h[0])
    assert np.array_equal(quantize_per_channel(w, 4, h)[0], quantize_per_channel(w, 4)[0])
    # inputs the calibration never reached (zero rows and columns of H) do not count as missing
    x[:, :8] = 0
    x = np.concatenate([x, rng.standard_normal((200, 64))])
    x[:, :8] = 0
    assert determined(x.T @ x)


def test_recurrent_steps_round_alike_and_share(tmp_path):
    """The steps of an unrolled LSTM read one recurrent weight: GPTQ rounds it against their
    tied moments, so every step holds the same integers and the arrays hold them once."""
    model = lstm()
    calibration = [feeds_of(model, seed=s) for s in range(CALIBRATION)]

    def build(rounding: str) -> cimc.Program:
        return cimc.compile(
            model,
            target="int4-sram",
            pipeline=f"fold-bn,quantize-weights{{rounding={rounding}}},quantize-act",
            calibration=calibration,
        )

    program = build("gptq")
    maps = mappings(program)
    assert sum("shares" in m for m in maps.values()) == DIRS * (SEQ - 1) - 1
    nearest = quant_layers(build("nearest"))
    got = quant_layers(program)
    assert any(not np.array_equal(got[n]["wq"], nearest[n]["wq"]) for n in got)
    simulate_checked(program, model, tmp_path)


def test_gptq_without_calibration_is_refused():
    graph = cimc.import_onnx(DATA / "digits_cnn.onnx", {"input": (1, 1, 16, 16)})
    with pytest.raises(PassError, match="rounding=gptq .* calibration"):
        run_pipeline(graph, parse_pipeline("quantize-weights{rounding=gptq}"), PassContext())
