"""The benchmark scripts still run: each one's --quick mode for seconds, against real servers (no speed asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")


def run_script(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=REPO, env=env, capture_output=True, check=False,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("mode, per_request", [("json", 2), ("multipart", 2), ("raw", 1)])
def test_loadgen_levels_count_images_and_read_stage_headers(vit_server, tmp_path, mode, per_request):
    out = tmp_path / "levels.json"
    run_script("loadgen.py", "--url", vit_server.url + "/embed", "--concurrency", "2", "--rate", "10",
               "--duration", "1", "--warmup", "0", "--mode", mode, "--images-per-request", str(per_request),
               "--image", "png-alpha", "--out", str(out))
    levels = json.loads(out.read_text())["levels"]
    assert [("concurrency" in lv, "rate" in lv) for lv in levels] == [(True, False), (False, True)]
    for level in levels:
        assert level["ok_requests"] > 0 and level["errors"] == {}
        assert level["img_per_s"] == pytest.approx(level["req_per_s"] * per_request, rel=0.01)  # both rounded to 0.01
        assert set(level["stage_median_ms"]) == {"preprocess", "queue", "inference"}
        assert level["p50_ms"] <= level["p99_ms"] <= level["max_ms"]


def test_loadgen_refuses_a_target_that_is_not_loopback():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(BENCH / "loadgen.py"), "--url", "http://192.0.2.1:9/embed"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "not loopback" in proc.stderr


@pytest.mark.slow
def test_sweep_quick_writes_table_and_plots(tmp_path):
    run_script("sweep.py", "--quick", "--suites", "upload", "--out", str(tmp_path / "sweep"))
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert set(report["suites"]["upload"]["configs"]) == {"json base64", "multipart"}
    assert (tmp_path / "sweep-upload.png").stat().st_size > 0
    assert "| json base64 | 4 |" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow
@needs_wrk
def test_overhead_quick_splits_cpu_by_role(tmp_path):
    run_script("overhead_bench.py", "--quick", "--out", str(tmp_path / "overhead"))
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert report["roles"]["http"] == 1 and report["roles"]["model"] == 1 and report["roles"]["preprocess"] >= 1
    assert report["median"]["cpu_ms_per_image"]["http"] > 0
    assert report["roles"]["other"] >= 2  # the resource tracker and the workers' fork server
    profile = report["profile"]
    if "skipped" not in profile:  # each role's samples were told apart (a ';' in a command line once hid the workers')
        assert profile["role_pct"]["http"] > 0 and profile["role_pct"]["preprocess"] > 0


@pytest.mark.slow
@needs_wrk
def test_serving_bench_quick(tmp_path):
    run_script("serving_bench.py", "--quick", "--iei-venv", sys.prefix, "--out", str(tmp_path / "serving"))
    assert (tmp_path / "serving.md").exists()


@pytest.mark.slow
@needs_wrk
def test_ab_bench_quick_records_both_variants_and_their_precision(tmp_path):
    run_script("ab_bench.py", "--quick", "--a", "--dtype float32", "--b", "--dtype auto", "--out", str(tmp_path / "ab"))
    report = json.loads((tmp_path / "ab.json").read_text())
    a, b = (report["variants"][k] for k in "AB")
    assert a["runs"][0]["info"]["model_dtype_reason"] == "float32: requested"
    assert b["runs"][0]["info"]["model_dtype_reason"].startswith(("bfloat16: ", "float32: "))
    assert a["median_img_per_s"] > 0 and b["median_img_per_s"] > 0
    assert "| B | `--backend-threads 1 --dtype auto` |" not in (tmp_path / "ab.md").read_text()  # compute: no extra flags
    assert "| B | `--dtype auto` |" in (tmp_path / "ab.md").read_text()


def test_preprocess_bench_decoder_table_compares_with_the_exact_path():
    sys.path.insert(0, str(BENCH))
    try:
        import preprocess_bench
    finally:
        sys.path.remove(str(BENCH))
    rows = {(r["image"], r["decoder"]): r for r in preprocess_bench.decoder_table(quick=True)}
    assert rows[("1024x768", "pillow full")]["cosine"] == 1.0
    draft = rows[("1024x768", "pillow draft (today)")]
    assert draft["vs_draft"] == 1.0 and draft["decoded"] == "512x384" and draft["cosine"] >= 0.999


def test_jpeg_decoder_bench_compares_pillow_and_auto(tmp_path):
    run_script("jpeg_decoder_bench.py", "--rounds", "1", "--out", str(tmp_path / "jpeg.md"))
    table = (tmp_path / "jpeg.md").read_text()
    assert "| 1024x768 | vit (fixed 224, bilinear) |" in table
    assert "simplejpeg 3/8" in table and "Pillow (no win)" in table


@pytest.mark.slow
@pytest.mark.parametrize("script", ["preprocess_bench.py", "backend_bench.py",
                                    pytest.param("compute_efficiency.py", marks=needs_wrk), "gpu_check.py",
                                    "naflex_bench.py", "overload_bench.py"])
def test_other_benchmarks_quick(tmp_path, script):
    run_script(script, "--quick", "--out", str(tmp_path / "result"))


def _soak_module():
    sys.path.insert(0, str(BENCH / "soak"))
    try:
        import soak
    finally:
        sys.path.remove(str(BENCH / "soak"))
    return soak


def test_soak_leak_check_tells_a_plateau_from_a_leak():
    rss_growth = _soak_module().rss_growth
    times = range(0, 600, 10)
    plateau = [{"t_s": t, "server_mb": 300, "total_mb": 800 + min(t, 200) * 0.7} for t in times]  # steps, then flat
    leak = [{"t_s": t, "server_mb": 300, "total_mb": 800 + t * 0.3} for t in times]  # 18 MB a minute
    assert rss_growth(plateau, 15)["growth_total_mb"] > 64 > rss_growth(plateau, 15)["late_growth_total_mb"]
    assert rss_growth(leak, 15)["late_growth_total_mb"] > 64


def test_rss_probe_runs(tiny_model, tmp_path):
    out = tmp_path / "rss"
    run_script("soak/rss_probe.py", "--model", str(tiny_model("vit")), "--passes", "2", "--max-batch-size", "3",
               "--variants", "mixed", "--out", str(out))
    assert len(json.loads(out.with_suffix(".json").read_text())["variants"]["mixed"]) == 3


@pytest.mark.slow
@needs_wrk
def test_floor_bench_quick_sums_the_parts_into_a_ceiling(tmp_path):
    run_script("floor_bench.py", "--quick", "--scenarios", "overhead", "--out", str(tmp_path / "floor"))
    row = json.loads((tmp_path / "floor.json").read_text())["scenarios"]["overhead"]
    parts = row["parts_cpu_ms"]
    assert all(ms > 0 for ms in parts.values()) and row["floor_cpu_ms"] == pytest.approx(sum(parts.values()), abs=1e-3)
    assert row["ceiling"] == pytest.approx(os.cpu_count() * 1000 / row["floor_cpu_ms"], rel=1e-3)
    assert {"uvicorn", "litestar"} <= set(row["http"]) and row["iei"]["rps"] > 0
    assert "ceiling: " in (tmp_path / "floor.md").read_text()


@pytest.mark.slow
@needs_wrk
def test_frontends_bench_quick_compares_one_and_two_frontends(tmp_path):
    run_script("frontends_bench.py", "--quick", "--out", str(tmp_path / "frontends"), timeout=400)
    report = json.loads((tmp_path / "frontends.json").read_text())
    assert report["roles"]["frontends-1"].get("frontends", 0) == 0 and report["roles"]["frontends-2"]["frontends"] == 2
    one, two = report["median"]["1"]["cpu_ms_per_request"], report["median"]["2"]["cpu_ms_per_request"]
    assert one["engine"] > 0 and two["frontends"] > 0 and two["engine"] > 0
    assert [row["n"] for row in report["projection"]["scaled"]] == list(range(1, 9))
    assert "| CPU-ms/request: frontend_tier |" in (tmp_path / "frontends.md").read_text()


def test_dinov3_parity_quick():
    proc = run_script("dinov3_parity.py", "--quick")
    assert "max |IEI - torch|" in proc.stdout
