"""Writing a benchmark's report: the one JSON layout every script in bench/ uses for --output."""

import json
from pathlib import Path


def write_report(path: Path | None, report: dict) -> None:
    """Write `report` as indented JSON to `path` (its folder created), or nothing when no path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
