"""The wheel carries what `serve` needs at run time besides code: the dashboard's files and
the OpenAPI document (docs/dashboard.md: no build step at install)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "model_registry" / "dashboard" / "static"


def test_the_wheel_ships_the_dashboard_and_the_openapi_document(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = tmp_path.glob("edge_model_runtime-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(path.relative_to(ROOT)) for path in STATIC.rglob("*") if path.is_file()}
    assert {
        "model_registry/dashboard/static/index.html",
        "model_registry/dashboard/static/vendor/uplot/uPlot.esm.js",
        "model_registry/dashboard/static/vendor/uplot/LICENSE",
    } <= expected
    assert expected <= names, sorted(expected - names)
    assert "model_registry/api/openapi.json" in names
