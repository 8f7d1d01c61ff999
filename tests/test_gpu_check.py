"""benchmarks/gpu_check.py runs end to end on the CPU in its dry mode (the Triton interpreter)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run():
    from nbllm.default_model import default_model_path

    # --default-model-config: the default model's shape with random weights, as on a GPU machine without the package
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--default-model-config", str(default_model_path())],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.split("=== GPU check ===")[1]
    assert "kernel tests: 2 passed" in summary
    assert "decode B2 ctx64" in summary and "best tuning" in summary
    assert "batch 1:" in summary and "greedy tokens equal for 1/1" in summary
    assert "greedy tokens equal for 2/2" in summary and "graphs = eager for 2/2" in summary
    assert "FAILED" not in summary
