#!/usr/bin/env bash
# Development only, before the first release: rewrite migration 0001 from the models.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f storage/migrations/versions/*.py
tmp=$(mktemp -d)
.venv/bin/python - "$tmp" <<'PY'
import sys
from pathlib import Path
from storage.config import StorageConfig
from storage.engine import create_db_engine
from storage.migrate import new_revision
engine = create_db_engine(StorageConfig.embedded(Path(sys.argv[1])))
new_revision(engine, "initial schema")
PY
cd storage/migrations/versions
file=$(ls *.py)
rev=${file%%_*}
sed -i "s/$rev/0001/g; s/^Create Date: .*/Create Date: 2026-11-28/" "$file"
mv "$file" 0001_initial_schema.py
rm -rf "$tmp"
