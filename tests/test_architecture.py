"""The architecture rules of DEVELOPERS.md, checked on the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_import_contracts_hold() -> None:
    result = subprocess.run([BIN / "lint-imports"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([BIN / "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_prediction_path_imports_neither_avalanche_nor_evidently(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from anamnesis.service.settings import Settings\n"
        "from anamnesis.service.app import create_app\n"
        f"create_app(Settings(home={str(tmp_path)!r}))\n"
        "import anamnesis.learner.modeling\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'avalanche', 'evidently'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_only_the_service_reads_the_environment() -> None:
    # Reading, not writing: the avalanche adapter points HOME elsewhere while avalanche imports.
    pattern = re.compile(r"os\.environ\.get|os\.environ\[|getenv\(|BaseSettings")
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("storage", "learner", "monitor", "cohort")
        for path in (ROOT / "src" / "anamnesis" / package).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []
