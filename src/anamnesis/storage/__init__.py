"""Everything anamnesis stores: the SQLModel tables, the one write path, ingest, artifacts, migrations."""
