"""The study's cache stays under its limit: least recently used products go first, a file in
use stays, results do not change when a product is rebuilt."""

from __future__ import annotations

import os
import time

from cimc.search.cache_limit import IN_USE_S, mark_used, trim

MB = 1_000_000


def _file(folder, name, size, age_s):
    path = folder / name
    path.write_bytes(b"\0" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_least_recently_used_products_go_first(tmp_path):
    old = _file(tmp_path, "a.pkl", 3 * MB, IN_USE_S + 300)
    mid = _file(tmp_path, "b.onnx", 3 * MB, IN_USE_S + 200)
    new = _file(tmp_path, "c.pkl", 3 * MB, IN_USE_S + 100)
    data = _file(tmp_path, "chars-val-16-720.npz", 3 * MB, IN_USE_S + 900)
    mark_used(mid)  # a hit: now the most recently used, and in use
    assert trim(tmp_path, 7 * MB / 1e9) == [old]  # 9 MB of products; 6 fit
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "b.onnx",
        "c.pkl",
        "chars-val-16-720.npz",  # data files are not products: never evicted
    ]
    assert trim(tmp_path, 2 * MB / 1e9) == [new]  # b.onnx is in use: kept over the limit
    assert mid.is_file() and data.is_file()
    assert trim(tmp_path, 2 * MB / 1e9) == []


def test_a_file_gone_meanwhile_is_not_an_error(tmp_path):
    mark_used(tmp_path / "evicted.pkl")  # a hit on a file another worker just removed
    assert not (tmp_path / "evicted.pkl").exists()
    assert trim(tmp_path / "empty", 0.0) == []
