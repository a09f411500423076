"""Smoke test of benchmarks/bench.py --quick (reference and ltnb on the same data, ratios printed)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTNB_CACHE", str(tmp_path / "cache"))  # the crossover is measured into a temp cache
    spec = importlib.util.spec_from_file_location("ltnb_bench", ROOT / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--json", str(tmp_path / "bench.json")])
    text = capsys.readouterr().out
    assert "| round | sparsity |" in text and "whole chain" in text and "GFLOP/s" in text
    assert len(out["reference"]) == len(out["ltnb"]) == 3
    assert out["speedup"] > 0 and out["matmul_gflops"] > 0 and out["dense_gflops"] > 0
    assert (tmp_path / "cache" / "crossover.json").exists() and (tmp_path / "bench.json").exists()
    for a, b in zip(out["reference"], out["ltnb"]):
        assert abs(a["sparsity"] - b["sparsity"]) < 0.01  # same pruning schedule
