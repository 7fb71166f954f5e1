"""Train the small-scale elastic families on the rendered characters and measure the
weight-sharing gap.

    python benchmarks/train_elastic.py [--families elastic-resnet-chars,...] [--steps 300]
        [--lr LR] [--seed 0] [--out DIR] [--weights cimc/data/elastic]

Per family (one torch thread), with its recipe (cimc.train.elastic.recipe; --steps and --lr
override it): sandwich-rule training with in-place distillation
(cimc.train.elastic, seeded) for --steps steps; then the validation accuracy, after BatchNorm
recalibration on 1,024 training images, of the largest, the smallest and 20 seeded random
subnets; then the largest, the smallest and the first 3 random architectures trained alone from
fresh weights for the same number of steps (3 of 20, for time), and the gap. Progress lines go to
stderr and <out>/<family>.log.jsonl; results to <out>/<family>.json; trained weights to
<weights>/<family>.pt. The results record the machine's load average (other jobs slow the
run down; they do not change its numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cimc.atomic import atomic_path
from cimc.models.elastic import WEIGHTS, family
from cimc.train.data import load
from cimc.train.elastic import (
    ElasticTrainConfig,
    recipe,
    subnet_accuracy,
    train_alone,
    train_supernet,
)

FAMILIES = ("elastic-resnet-chars", "elastic-mbv3-chars", "elastic-vit-chars")
RANDOM_SUBNETS = 20
ALONE_RANDOM = 3


def run_family(name: str, cfg: ElasticTrainConfig, out: Path, weights: Path) -> dict:
    data = load("chars")
    log_path = out / f"{name}.log.jsonl"
    log_path.write_text("")

    def log(rec: dict) -> None:
        print(json.dumps(rec), file=sys.stderr, flush=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    load_before, t0 = os.getloadavg()[1], time.perf_counter()
    fam = train_supernet(family(name, cfg.seed, trained=False), data, cfg, log)
    train_seconds = time.perf_counter() - t0
    weights.mkdir(parents=True, exist_ok=True)
    fam.save(weights / f"{name}.pt")

    rng = np.random.default_rng(cfg.seed + 1)
    randoms = [fam.sample(rng) for _ in range(RANDOM_SUBNETS)]
    configs = [fam.largest(), fam.smallest(), *randoms]
    labels = ["largest", "smallest", *(f"random{i}" for i in range(RANDOM_SUBNETS))]
    shared = subnet_accuracy(fam, configs, data, cfg.bn_images)
    rows = [
        {
            "subnet": lab,
            "config": c,
            "params": sum(p.numel() for p in fam.subnet(c).parameters()),
            "shared_val_acc": a,
        }
        for lab, c, a in zip(labels, configs, shared, strict=True)
    ]
    for row in rows[: 2 + ALONE_RANDOM]:
        fresh = family(name, cfg.seed, trained=False)
        train_alone(fresh, row["config"], data, cfg, log)
        row["alone_val_acc"] = subnet_accuracy(fresh, [row["config"]], data, cfg.bn_images)[0]
        log(
            {
                "run": f"{name}/alone",
                "subnet": row["subnet"],
                **{k: row[k] for k in ("shared_val_acc", "alone_val_acc")},
            }
        )
    paired = [r for r in rows if "alone_val_acc" in r]
    result = {
        "family": name,
        "train": cfg.to_dict(),
        "train_seconds": round(train_seconds, 1),
        "load_average_5min": [round(load_before, 1), round(os.getloadavg()[1], 1)],
        "rows": rows,
        "mean_shared_val_acc_random": statistics.mean(r["shared_val_acc"] for r in rows[2:]),
        "mean_gap_pp": 100
        * statistics.mean(r["alone_val_acc"] - r["shared_val_acc"] for r in paired),
    }
    with atomic_path(out / f"{name}.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--steps", type=int, default=ElasticTrainConfig.steps)
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/elastic")
    ap.add_argument("--weights", default=str(WEIGHTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.families.split(","):
        lr = {} if args.lr is None else {"lr": args.lr}
        cfg = recipe(name, steps=args.steps, seed=args.seed, **lr)
        res = run_family(name, cfg, out, Path(args.weights))
        print(f"{name}: trained {res['train_seconds']} s")
        print(f"{'subnet':10} {'params':>8} {'shared':>7} {'alone':>7}")
        for r in res["rows"]:
            alone = f"{r['alone_val_acc']:7.3f}" if "alone_val_acc" in r else "      -"
            print(f"{r['subnet']:10} {r['params']:8d} {r['shared_val_acc']:7.3f} {alone}")
        print(f"mean gap (alone - shared) over the paired subnets: {res['mean_gap_pp']:.1f} pp")


if __name__ == "__main__":
    main()
