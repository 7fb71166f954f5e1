"""Label-free fine-tuning measured: fp32, int8, post-training CIMPool and CIMPool fine-tuned by
distillation from the fp32 model (no labels), each compiled and scored, on the bundled digits
CNN and on the devkit's real models (../shared/devkit).

    python benchmarks/finetune.py [--models digits,mnist8,magika,openwakeword,silero_vad,ddddocr]
                                  [--steps N] [--keep 0.25] [--keep-sensitive N] [--threads 1]
                                  [--tuned-only] [--workdir DIR] [--rendered N] [--ocr-whole]
                                  [--balance [P]] [--scale per-channel] [--blend F] [--int-bits N]
                                  [--json out.json]

digits: the unlabelled data are the images of the model's own training split (scikit-learn
digits, the split of benchmarks/make_digits_model.py; labels dropped); the test split
(cimc/data/digits_test.npz, never seen) scores; calibration: the first 256 unlabelled images.

Kit models: the distillation data are never the scored data. mnist8 distils on two thirds of
the kit's images and is scored on the other third (every third image, 599); openwakeword
distils on the odd clips and is scored on the even ones (48: 8 of each wake word, 24 others);
magika distils on 2048 other files of this machine (its features, no labels) and is scored on
all 235 kit files. Each model file the kit runs (the mel front end of openwakeword stays fp32)
is fine-tuned on the feeds the kit's scorer gives it on the distillation inputs (openwakeword:
the embedding a clip's windows at a time, through its fp32 heads; then the heads on the
compiled fine-tuned embedding's outputs); activation ranges of every compiled row come from
the samples distill calibrates on. "agree" is top-1 agreement with fp32 on the scored inputs
(for openwakeword the clip's 4-way decision). Every row is the compiled graph run by the reference
interpreter (bit-identical to the simulator); wall time includes compiling, scoring and training.

silero_vad distils on the odd clips (24, each a sample of 188 frames) and is scored on the even
ones (24: every labelled frame); "agree": the speech / no-speech decision of every frame.
ddddocr distils on two thirds of the images (128 px crops of them; with --ocr-whole the whole
images, see ocr_whole) and on --rendered N (0) text
images rendered on this machine (benchmarks/text_images.py; not kit images, no labels), and is
scored on every third kit image (80); every row, fp32 included, reads the images edge-padded to a
multiple of 32 px (6 compiled widths, as benchmarks/ptq.py); "agree": the same decoded string.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from kit import (
    FRONT_END,
    KIT,
    CimcRunner,
    check_devkit,
    key,
    magika_unlabelled,
    pad_width,
    subset_kit,
)
from text_images import text_images

import cimc
from cimc.atomic import write_text_atomic
from cimc.cli.finetune import add_balance_option
from cimc.compiler import default_pipeline
from cimc.report.bits import storage_report
from cimc.train.distill import (
    DistillConfig,
    Downstream,
    distill,
    export,
    load_samples,
    sensitive_layers,
)
from cimc.train.layers import Scheme, get_scheme

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "cimc" / "data" / "digits_cnn.onnx"
SHAPE = {"input": (1, 1, 16, 16)}
CALIB = 256  # samples that calibrate activation ranges (DistillConfig.calib)
# Per model: error-term fraction kept (the most that stays <= 0.56 bit per compressed weight),
# steps and batch (each model file's training within about 10 min on one core).
KEEP = {"digits": 0.25, "mnist8": 0.25, "magika": 0.5, "openwakeword": 0.25}
STEPS = {"digits": 4000, "mnist8": 3000, "magika": 200, "openwakeword": 600}
STEPS.update({f"openwakeword/{h}_v0.1.onnx": 800 for h in ("hey_jarvis", "alexa", "hey_marvin")})
# magika: a step of 8 samples costs 0.62 s of one core (its 655 k-weight conv over 512
# positions, forward and backward: 0.14 s); the embedding: a sample is a clip's 34 windows
BATCH = {"magika": 8, "openwakeword/embedding_model.onnx": 1}
# magika at 3e-3 drifts from fp32 on the kit's files after ~50 steps (its distillation files are
# not the kit's types): agreement 89.4 % at step 200, 91.9 % at 1e-3, 92.8 % at 3e-4
LR = {"magika": 3e-4}
LOSS = {"openwakeword/embedding_model.onnx": "mse"}  # an embedding, not class scores
# Weight of the per-layer loss (distill's DistillConfig.features): post-training CIMPool's
# embedding loses its signal layer by layer (its 18 pooled convs' inputs stop varying between
# windows), so each layer gets its fp32 input as a target too.
FEATURES = {"openwakeword/embedding_model.onnx": 1.0}
# Pooled layers kept at int8 (weight-pool's keep_sensitive: the most sensitive ones), in the
# post-training and fine-tuned rows alike (--keep-sensitive). 0: measured, the embedding with 4,
# 8 or 14 of its 18 pooled convs at int8 still answers "none" for every clip (README).
KEEP_SENSITIVE = {"openwakeword/embedding_model.onnx": 0}
HELD_OUT = {"mnist8": 3, "openwakeword": 2}  # every k-th kit input is scored, the others distil
# A file whose sample is a whole call of the kit's scorer (a clip's embedding windows), not one
# row, and how many consecutive rows of its output the later files read (the wake-word heads
# read 16 embeddings): it learns through them (distill's Downstream).
THROUGH = {"openwakeword/embedding_model.onnx": 16}

# silero_vad and ddddocr, each one LSTM-bearing file. silero_vad's sample is a whole clip (the
# kit's feed: 188 frames the LSTM reads in order, from a zero state); its output is one
# probability per frame, so MSE rather than a softmax over frames. ddddocr's sample is an image
# edge-padded to a multiple of 32 px (as benchmarks/ptq.py scores it) and cut into OCR_WIDTH px
# crops; 16 of them calibrate (each compile calibrates at every padded width it scores).
VAD, OCR = "silero_vad/silero_vad_16k_sequence.onnx", "ddddocr/common.onnx"
OCR_WIDTH = 128
# ddddocr at keep 1/2 (0.571 bits with every layer pooled) with its 20 most sensitive pooled
# layers at int8 (18 of its 20 convs and the LSTM's two input projections: the ranking at 128 px,
# measured): the recurrent R and two 576-weight convs stay pooled, 0.557 bits. At lr 1e-3 the
# student reads only blanks by step 100; at 3e-4 the loss falls. 520 steps: the best row
# (65.00 %); with --rendered 2000, 600 steps gave 62.50 % (README).
KEEP.update(silero_vad=0.5, ddddocr=0.5)
KEEP_SENSITIVE[OCR] = 20
STEPS.update(silero_vad=200, ddddocr=520)
LR["ddddocr"] = 3e-4
HELD_OUT.update(silero_vad=2, ddddocr=3)
BATCH.update(silero_vad=4, ddddocr=4)
LOSS[VAD] = "mse"
WHOLE_FEEDS = {VAD}
CALIB_ROWS = {OCR: 16}
# Text images rendered on this machine (benchmarks/text_images.py, not kit images) that ddddocr
# can also distil on, after the kit's 160 (--rendered): its 352 kit crops alone are fitted after
# ~100 steps, but 2000 more images did not raise the compiled score (README), so none by default.
RENDERED = {OCR: 0}
# weight-pool's options besides the defaults (--scale): per-channel gives each output channel its
# own alpha, the per-channel scale a model whose BatchNorms were folded before export has lost
# (openwakeword's embedding: fine-tuning trains no BatchNorm scale there)
POOL_OPTIONS: dict[str, str] = {}
# --int-bits N: kit models fine-tuned to N-bit per-channel integer weights (int4-sram with
# weight_bits=N) by the same distillation instead of CIMPool: what the recipe reaches where the
# bits are not the limit, and how many bits a model needs (0: CIMPool)
INT_BITS = {"bits": 0}
# --blend: the share of each kit file's steps over which its weights move from fp32 to compressed
# (alpha-blending): post-training, openwakeword's embedding loses its signal at once
BLEND = {"share": 0.0}
# --ocr-whole: ddddocr distils on its whole padded images (ocr_whole) rather than crops of them,
# as it is scored: its BiLSTM then runs the sequence lengths of the scored images, and no glyph
# is cut. 2 images a step: about the text of 4 crops (160 images hold 352), at 2 x 288 px.
OCR_WHOLE = {OCR: False}
WHOLE_BATCH = 2
# --balance: ddddocr's KL over CTC frames weighted by the inverse frequency of fp32's class
# (DistillConfig.balance): ~75 % of its frames are blanks, which dominate the plain mean.
BALANCE = {OCR: 0.0}


def unlabelled_digits(folder: Path) -> tuple[Path, Path]:
    """(all training images, the first 256 of them) as .npz files of input samples."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_digits_model import load_splits, to_input

    x = np.asarray(to_input(load_splits(0)["train"][0]), dtype=np.float32)
    np.savez(folder / "unlabelled.npz", input=x)
    np.savez(folder / "calib.npz", input=x[:CALIB])
    return folder / "unlabelled.npz", folder / "calib.npz"


def bits(graphs: list[cimc.Graph]) -> dict[str, float]:
    """Bits per compressed weight (without and with the pools) and per weight, over the
    compiled graphs of one model (one pool per graph)."""
    reports = [storage_report(g) for g in graphs]
    cw = sum(r["compressed_weights"] for r in reports)
    cb = sum(r["compressed_bits_per_weight"] * r["compressed_weights"] for r in reports if cw)
    pool = sum(r["pool_bits"] for r in reports)
    return {
        "bits_compressed": cb / cw if cw else float("nan"),
        "bits_with_pool": (cb + pool) / cw if cw else float("nan"),
        "bits_all": sum(r["total_bits"] for r in reports) / sum(r["weights"] for r in reports),
    }


def post_training(keep: float, sensitive: int = 0) -> str:
    """The target's default pipeline with error-prune keeping ``keep`` and weight-pool keeping
    the ``sensitive`` most sensitive layers at int8 (and POOL_OPTIONS)."""
    text = default_pipeline(cimc.load_target("cimpool-sram"))
    opts = {**POOL_OPTIONS, **({"keep_sensitive": sensitive} if sensitive else {})}
    if opts:
        inner = ",".join(f"{k}={v}" for k, v in opts.items())
        text = text.replace("weight-pool", f"weight-pool{{{inner}}}")
    return text.replace("error-prune", f"error-prune{{keep={keep:g}}}")


def cimpool_scheme(keep: float) -> Scheme:
    """The scheme fine-tuning trains: CIMPool keeping ``keep`` of the error term, POOL_OPTIONS."""
    return get_scheme(f"cimpool-keep{keep:g}", **POOL_OPTIONS)


def tuned_scheme(keep: float) -> Scheme:
    """The scheme the kit models are fine-tuned to: CIMPool keeping ``keep``, or N-bit integer
    weights (--int-bits N)."""
    bits = INT_BITS["bits"]
    return get_scheme("int4", bits=bits) if bits else cimpool_scheme(keep)


def tuned_target(keep: float) -> tuple[str, dict | None]:
    """The target (and its overrides) the fine-tuned kit models compile for."""
    bits = INT_BITS["bits"]
    if bits:
        return ("int4-sram", None if bits == 4 else {"weight_bits": bits})
    return ("cimpool-sram", pool_target(keep))


def pool_tag() -> str:
    """What the rows' labels say of POOL_OPTIONS."""
    return ", per-channel scale" if POOL_OPTIONS.get("scale") == "per-channel" else ""


def pool_target(keep: float) -> dict:
    return {"error_rows": int(128 * keep)}


# ---- digits -------------------------------------------------------------------------------------
def score_digits(
    model: str | Path, target: str | None, pipeline: str | None, calib: Path, keep: float
) -> dict:
    """Top-1 predictions, accuracy and bits of ``model`` compiled for ``target`` (None: fp32)."""
    test = np.load(ROOT / "cimc" / "data" / "digits_test.npz")
    if target is None:  # fp32: the imported graph as it is
        graph = cimc.import_onnx(model, SHAPE)
    else:
        graph = cimc.compile(
            model,
            target,
            pipeline=pipeline,
            input_shapes=SHAPE,
            calibration=str(calib),
            overrides=pool_target(keep) if target == "cimpool-sram" else None,
        ).graph
    logits = np.concatenate(
        [cimc.interpret(graph, {"input": x[None]})["logits"] for x in test["input"]]
    )
    pred = logits.argmax(1)
    return {"pred": pred, "metric": float((pred == test["label"]).mean()), **bits([graph])}


def digits_rows(args: argparse.Namespace, folder: Path) -> tuple[list[dict], str]:
    keep, steps = args.keep or KEEP["digits"], args.steps or STEPS["digits"]
    data_path, calib = unlabelled_digits(folder)
    rows = []
    for label, target, pipeline in [
        ("fp32", None, None),
        ("int8 (post-training)", "int8-sram", None),
        (f"CIMPool keep {keep:g}{pool_tag()}, post-training", "cimpool-sram", post_training(keep)),
    ]:
        t0 = time.perf_counter()
        r = score_digits(MODEL, target, pipeline, calib, keep)
        rows.append({"row": label, **r, "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    graph = cimc.import_onnx(MODEL, SHAPE)
    data = load_samples(data_path, graph, 16)
    cfg = DistillConfig(steps=steps, lr=args.lr or LR.get("digits", 3e-3))
    model = distill(graph, cimpool_scheme(keep), data, cfg)
    pipe = export(model, MODEL, folder / "tuned.onnx", folder / "tuned.npz")
    r = score_digits(folder / "tuned.onnx", "cimpool-sram", pipe, calib, keep)
    label = f"CIMPool keep {keep:g}{pool_tag()}, fine-tuned without labels"
    rows.append({"row": label, **r, "seconds": time.perf_counter() - t0})
    n = len(data["input"])
    return rows, f"digits CNN, {n} unlabelled images, {steps} steps, 360 test digits"


# ---- devkit models ------------------------------------------------------------------------------
def record(kit: ModuleType, name: str, where: Path, runner) -> tuple[np.ndarray, list]:
    """The kit's per-input verdicts on the inputs at ``where``, and every call its scorer made
    (model key, feeds, outputs); front-end files run in fp32 through onnxruntime."""
    calls, ort_run = [], kit.ort_run()

    def run(model: Path, feeds: dict) -> list:
        feeds = pad_width(feeds) if key(model) == OCR else feeds
        out = ort_run(model, feeds) if key(model) in FRONT_END else runner(model, feeds)
        calls.append((key(model), feeds, out))
        return out

    return kit.EVALS[name](run, where), calls


def decisions(kit: ModuleType, name: str, calls: list) -> np.ndarray:
    """Per scored input, what the kit's scorer decides from the outputs: the class, or for
    openwakeword the clip's wake word (0: none)."""
    if name in DECIDE:
        return DECIDE[name](kit, calls)
    if name == "magika":
        return calls[0][2][0].argmax(1)
    if name == "mnist8":
        return np.array([out[0].argmax() for _, _, out in calls])
    heads = [f"openwakeword/{f}" for f, _ in kit.OWW_HEADS]
    clips: list[dict[str, float]] = []
    for k, _, out in calls:
        if k in FRONT_END:  # a new clip
            clips.append(dict.fromkeys(heads, -np.inf))
        elif k in heads:
            clips[-1][k] = max(clips[-1][k], float(out[0].squeeze()))
    s = np.array([[c[h] for h in heads] for c in clips])
    return np.where(s.max(1) > 0.5, s.argmax(1) + 1, 0)


def distillation_feeds(kit: ModuleType, name: str, folder: Path, runner=None) -> dict[str, dict]:
    """Per model file to fine-tune, its unlabelled samples {input: [N, *sample]} (seeded
    shuffle): the feeds the kit's scorer gives it on the distillation inputs, a sample being
    one row of a feed (a whole feed for the files in THROUGH), with ``runner`` running the model
    files (default: onnxruntime, fp32)."""
    if name == "magika":
        return {"magika/model.onnx": {"bytes": magika_unlabelled(2048)[:, None]}}
    with np.load(KIT / "data" / f"{name}.npz") as d:
        n = len(d[d.files[0]])
    distil = np.arange(n) % HELD_OUT[name] != 0
    where = subset_kit(name, distil, folder / "distil")
    _, calls = record(kit, name, where, runner or kit.ort_run())
    samples: dict[str, dict[str, list]] = {}
    images = [feeds["input1"] for k, feeds, _ in calls if k == OCR]
    for k, feeds, _ in calls:
        for one in [] if k in FRONT_END else ocr_crops(feeds) if k == OCR else [feeds]:
            for i, v in one.items():
                whole = k in THROUGH or k in WHOLE_FEEDS
                rows = [v] if whole else [v[j : j + 1] for j in range(len(v))]
                samples.setdefault(k, {}).setdefault(i, []).extend(rows)
    out = {}
    for k, feeds in samples.items():
        stacked = {i: np.stack(v) for i, v in feeds.items()}
        order = np.random.default_rng(0).permutation(len(next(iter(stacked.values()))))
        out[k] = {i: v[order] for i, v in stacked.items()}
    if OCR in out:
        rows = list(out[OCR]["input1"])
        if OCR_WHOLE[OCR]:  # the crops that rank and calibrate, then the shuffled images
            order = np.random.default_rng(0).permutation(len(images))
            rows = rows[: CALIB_ROWS[OCR]] + [images[j] for j in order]
        rows += list(rendered_crops(RENDERED[OCR])) if RENDERED.get(OCR) else []
        out[OCR] = {"input1": ocr_whole(rows)}
    return out


def flat(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[N, *sample] -> the samples stacked along the first axis, as .npz data files hold them."""
    return {i: v.reshape(-1, *v.shape[2:]) for i, v in samples.items()}


def calib_samples(samples: dict[str, np.ndarray], k: str) -> int:
    """How many samples of model file ``k`` hold about CALIB rows (the activation-range
    calibration)."""
    return max(1, CALIB_ROWS.get(k, CALIB) // len(next(iter(samples.values()))[0]))


def calibration(samples: dict[str, np.ndarray], k: str) -> list[dict[str, np.ndarray]]:
    """The compiler's calibration feeds: the samples distill calibrates on (calib_samples)."""
    return [flat({i: v[: calib_samples(samples, k)] for i, v in samples.items()})]


def fine_tune(
    k: str,
    samples: dict[str, np.ndarray],
    teacher: dict[str, np.ndarray],
    keep: float,
    cfg: DistillConfig,
    folder: Path,
    downstream: Downstream | None = None,
) -> tuple[Path, str]:
    """One kit model file fine-tuned on ``samples``, its fp32 self fed ``teacher`` (the same
    inputs unless an earlier, compressed stage made ``samples``): (its ONNX file, pipeline)."""
    stem = folder / k.replace("/", "_").removesuffix(".onnx")
    np.savez(f"{stem}.data.npz", **flat(samples))
    np.savez(f"{stem}.teacher.npz", **flat(teacher))
    graph = cimc.import_onnx(KIT / "models" / k, {i: v.shape[1:] for i, v in samples.items()})
    data = load_samples(f"{stem}.data.npz", graph, cfg.min_samples)
    fp32 = load_samples(f"{stem}.teacher.npz", graph, cfg.min_samples)
    t0 = time.perf_counter()
    scheme = tuned_scheme(keep)
    kept = KEEP_SENSITIVE.get(k, 0)
    if kept and k == OCR and OCR_WHOLE[OCR]:
        kept = ocr_kept(scheme, data["input1"][: cfg.calib], kept)
    model = distill(
        graph,
        scheme,
        data,
        cfg,
        teacher_data=fp32,
        downstream=downstream,
        keep_sensitive=kept,
        log_path=f"{stem}.log.jsonl",
        checkpoint=f"{stem}.checkpoint.pt",
    )
    print(
        f"  {k}: {len(data[graph.inputs[0]])} samples, {cfg.steps} steps, {len(model.kept)} kept "
        f"at int8, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    pipe = export(model, KIT / "models" / k, f"{stem}.tuned.onnx", f"{stem}.tuned.npz")
    return Path(f"{stem}.tuned.onnx"), pipe


def fine_tuned(
    kit: ModuleType,
    name: str,
    samples: dict[str, dict],
    calib: dict[str, list[dict]],
    keep: float,
    cfg: DistillConfig,
    steps: dict[str, int],
    folder: Path,
) -> CimcRunner:
    """Every model file fine-tuned in the order the scorer runs them; the first one (the
    embedding) learns through the fp32 later ones (THROUGH), which then learn on its compiled
    fine-tuned outputs to match their fp32 selves on its fp32 outputs. Returns the compiled
    pipeline."""
    ort, tuned, calib, after = kit.ort_run(), {}, dict(calib), None

    def compiled() -> CimcRunner:
        pipes = {k: p for k, (_, p) in tuned.items()}
        files = {k: f for k, (f, _) in tuned.items()}
        target, overrides = tuned_target(keep)
        return CimcRunner(target, pipes, calib, files, overrides)

    for k, fp32 in samples.items():
        if tuned and after is None:  # the first file feeds the others
            first, done = compiled(), set(tuned)

            def run(model: Path, feeds: dict, first=first, done=done) -> list:
                return (first if key(model) in done else ort)(model, feeds)

            after = distillation_feeds(kit, name, folder / "after", run)
        inputs = fp32 if after is None else after[k]
        calib[k] = calibration(inputs, k)
        cfg_k = replace(
            cfg,
            steps=steps[k],
            loss=LOSS.get(k, "auto"),
            calib=calib_samples(inputs, k),
            batch_size=BATCH.get(k, cfg.batch_size),
            features=FEATURES.get(k, 0.0),
            balance=BALANCE.get(k, 0.0),
            blend=round(BLEND["share"] * steps[k]),
        )
        down = None
        if k in THROUGH:
            later = [
                cimc.import_onnx(KIT / "models" / f, {i: v.shape[1:] for i, v in s.items()})
                for f, s in samples.items()
                if f != k
            ]
            down = Downstream(tuple(later), THROUGH[k])
        tuned[k] = fine_tune(k, inputs, fp32, keep, cfg_k, folder, down)
    return compiled()


def kit_rows(
    kit: ModuleType, name: str, args: argparse.Namespace, folder: Path
) -> tuple[list[dict], str]:
    keep = args.keep or KEEP[name]
    t0 = time.perf_counter()
    samples = distillation_feeds(kit, name, folder)
    given = args.steps is not None  # 0: the untrained student exported (post-training)
    steps = {k: args.steps if given else STEPS.get(k, STEPS[name]) for k in samples}
    prep = time.perf_counter() - t0  # recording the distillation feeds: charged to fine-tuning
    calib = {k: calibration(s, k) for k, s in samples.items()}
    with np.load(KIT / "data" / f"{name}.npz") as d:
        n = len(d[d.files[0]])
    scored = np.arange(n) % HELD_OUT[name] == 0 if name in HELD_OUT else np.ones(n, bool)
    where = subset_kit(name, scored, folder / "scored")
    shift = 2 if name in ("mnist8", "ddddocr") else 0  # random shifts for images only
    lr = args.lr or LR.get(name, 3e-3)
    cfg = DistillConfig(lr=lr, batch_size=BATCH.get(name, 32), shift=shift)
    pool = pool_target(keep)
    post = {k: post_training(keep, KEEP_SENSITIVE.get(k, 0)) for k in samples}
    kept = sum(KEEP_SENSITIVE.get(k, 0) for k in samples)
    tag = (f", {kept} layers int8" if kept else "") + pool_tag()
    how = "fine-tuned without labels" if any(steps.values()) else "untrained student exported"
    ibits = INT_BITS["bits"]
    tuned = f"int{ibits} ({ibits}-bit weights)" if ibits else f"CIMPool keep {keep:g}{tag}"
    rows = []
    baselines = [
        ("int8 (post-training)", CimcRunner("int8-sram", None, calib)),
        (
            f"CIMPool keep {keep:g}{tag}, post-training",
            CimcRunner("cimpool-sram", post, calib, overrides=pool),
        ),
    ]
    for label, runner in [
        ("fp32", kit.ort_run()),
        *([] if args.tuned_only else baselines),
        (f"{tuned}, {how}", None),
    ]:
        t0 = time.perf_counter()
        if runner is None:
            runner = fine_tuned(kit, name, samples, calib, keep, cfg, steps, folder)
            t0 -= prep
        ok, calls = record(kit, name, where, runner)
        graphs = {c[0]: i.graph for c, i in getattr(runner, "graphs", {}).items()}
        rows.append(
            {
                "row": label,
                "pred": decisions(kit, name, calls),
                "metric": float(ok.mean()),
                **(bits(list(graphs.values())) if graphs else {}),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"  {name} {label}: {rows[-1]['metric']:.4f} ({rows[-1]['seconds']:.0f} s)")
    sizes = ", ".join(
        f"{k} {len(next(iter(s.values())))} samples, {steps[k]} steps" for k, s in samples.items()
    )
    return (
        rows,
        f"{name}: {scored.sum()} scored inputs; distillation: {sizes}",
    )


# ---- silero_vad and ddddocr ---------------------------------------------------------------------
def ocr_crops(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """ddddocr's (padded) image as OCR_WIDTH px crops every OCR_WIDTH / 2 px, the last one
    flush right: fixed-shape samples covering every glyph."""
    x = feeds["input1"]
    width = x.shape[-1]
    starts = sorted({*range(0, width - OCR_WIDTH + 1, OCR_WIDTH // 2), width - OCR_WIDTH})
    return [{"input1": x[..., s : s + OCR_WIDTH]} for s in starts]


def ocr_whole(images: list[np.ndarray]) -> np.ndarray:
    """ddddocr's images [1, 1, 64, w] (whole, crops or both) as samples of one shape: each
    edge-padded on the right to the widest, [N, 1, 1, 64, widest]. One width, as the importer
    unrolls the LSTM for one sequence length; the padding extends each image's last column (its
    background), as pad_width does, and fp32 reads the same padded image the student does."""
    width = max(x.shape[-1] for x in images)
    return np.stack(
        [np.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])], mode="edge") for x in images]
    )


def ocr_kept(scheme: Scheme, calib: torch.Tensor, n: int) -> frozenset[str]:
    """ddddocr's ``n`` most sensitive pooled layers, ranked on the calibration crops (the first
    OCR_WIDTH px of ``calib``, padded to the whole images' width) at their own width: the layers
    the crop-distilled rows keep. Ranked at 288 px (36 LSTM steps), Conv_6 (576 weights) displaced
    the LSTM's forward input projection (1.05 M) (measured): 6.30 bits per weight, not 6.88."""
    graph = cimc.import_onnx(KIT / "models" / OCR, {"input1": (1, 1, 64, OCR_WIDTH)})
    return sensitive_layers(graph, scheme, {"input1": calib[..., :OCR_WIDTH]}, n)


def rendered_crops(n: int, seed: int = 0) -> np.ndarray:
    """The crops (as ocr_crops cuts the kit's padded images) of ``n`` rendered text images,
    shuffled: [crops, 1, 1, 64, OCR_WIDTH] float32 in [0, 1], as the kit feeds ddddocr."""
    rows = [
        c["input1"]
        for img in text_images(n, seed)
        for c in ocr_crops(pad_width({"input1": (img / np.float32(255))[None, None]}))
    ]
    return np.stack(rows)[np.random.default_rng(seed).permutation(len(rows))]


def vad_decisions(kit: ModuleType, calls: list) -> np.ndarray:
    """silero_vad: speech (probability > 0.5) or not, for every frame of every scored clip."""
    return np.concatenate([out[0] > 0.5 for _, _, out in calls])


def ocr_decisions(kit: ModuleType, calls: list) -> np.ndarray:
    """ddddocr: the string greedy CTC decoding reads, lower case (as the kit compares)."""
    charset = json.loads((KIT / "models" / "ddddocr" / "charset.json").read_text())
    return np.array([kit.ctc_greedy(out[0][:, 0], charset).lower() for _, _, out in calls])


DECIDE = {"silero_vad": vad_decisions, "ddddocr": ocr_decisions}


def table(rows: list[dict], what: str, load: str) -> str:
    lines = [
        f"{what} (load: {load})\n",
        "| model | bits per compressed weight | with the pool | bits per weight, all | "
        "task metric % | top-1 agreement with fp32 % | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    fp32 = rows[0]["pred"]
    for r in rows:
        pooled = np.isfinite(r.get("bits_compressed", np.nan))
        b = f"{r['bits_compressed']:.3f} | {r['bits_with_pool']:.3f}" if pooled else "– | –"
        all_bits = f"{r['bits_all']:.3f}" if "bits_all" in r and r["row"] != "fp32" else "32"
        agree = 100 * float((r["pred"] == fp32).mean())
        lines.append(
            f"| {r['row']} | {b} | {all_bits} | {100 * r['metric']:.2f} | {agree:.2f} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits", help="digits and/or kit models, comma-separated")
    ap.add_argument(
        "--steps",
        type=int,
        help="fine-tuning steps (default: per model; kit models: 0 exports the untrained student, "
        "post-training with the layers fine-tuning would keep)",
    )
    ap.add_argument("--lr", type=float, help="Adam's rate (default: per model, else 3e-3)")
    ap.add_argument("--keep", type=float, help="error-term fraction kept (default: per model)")
    ap.add_argument(
        "--keep-sensitive",
        type=int,
        help="pooled layers kept at int8 in the files KEEP_SENSITIVE names (default: its values)",
    )
    ap.add_argument(
        "--rendered",
        type=int,
        default=RENDERED[OCR],
        help="ddddocr: rendered text images (benchmarks/text_images.py) distilled on besides the "
        "kit's (default: %(default)s; 0: the kit's only)",
    )
    ap.add_argument(
        "--ocr-whole",
        action="store_true",
        help=f"ddddocr: distil on the whole padded images ({WHOLE_BATCH} a step), not on crops",
    )
    add_balance_option(ap, "ddddocr: ")
    ap.add_argument(
        "--scale",
        choices=("per-layer", "per-channel"),
        default="per-layer",
        help="weight-pool's alpha: one per layer (CIMPool's) or one per output channel",
    )
    ap.add_argument(
        "--blend",
        type=float,
        default=0.0,
        help="kit models: the first fraction of each file's steps moves its weights from fp32 "
        "to compressed (distill's DistillConfig.blend; default 0: compressed from the start)",
    )
    ap.add_argument(
        "--int-bits",
        type=int,
        default=0,
        metavar="N",
        help="kit models: fine-tune to N-bit integer weights (int4-sram with weight_bits=N, "
        "2-8) by the same distillation instead of CIMPool",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--tuned-only",
        action="store_true",
        help="kit models: fp32 and fine-tuned rows only (int8 and post-training do not change)",
    )
    ap.add_argument(
        "--workdir",
        help="keep the files here (log, checkpoint per model file): a rerun with the same "
        "arguments resumes the training (default: a new temporary folder)",
    )
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RENDERED[OCR] = args.rendered
    if args.ocr_whole:
        OCR_WHOLE[OCR] = True
        BATCH["ddddocr"] = WHOLE_BATCH
    BALANCE[OCR] = args.balance
    if not 0 <= args.blend <= 1:
        ap.error(f"--blend {args.blend}: give a fraction of the steps, 0 to 1")
    BLEND["share"] = args.blend
    if args.int_bits and not 2 <= args.int_bits <= 8:
        ap.error(f"--int-bits {args.int_bits}: give 2 to 8 bits per weight")
    INT_BITS["bits"] = args.int_bits
    if args.scale != "per-layer":
        POOL_OPTIONS["scale"] = args.scale
    if args.keep_sensitive is not None:
        KEEP_SENSITIVE.update(dict.fromkeys(KEEP_SENSITIVE, args.keep_sensitive))
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="cimc-finetune-"))
    names = args.models.split(",")
    kit = check_devkit() if set(names) - {"digits"} else None
    if set(names) - {"digits"} and kit is None:
        return 2
    out = {}
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        if name == "digits":
            rows, what = digits_rows(args, folder / name)
        else:
            rows, what = kit_rows(kit, name, args, folder / name)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(table(rows, what, f"{load} on {os.cpu_count()} cores"))
        print(flush=True)
        fp32 = rows[0]["pred"]  # the table's agreement column, kept in the JSON too
        agree = [float((r["pred"] == fp32).mean()) for r in rows]
        out[name] = [
            {**{k: v for k, v in r.items() if k != "pred"}, "agree": a} for r, a in zip(rows, agree)
        ]
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
