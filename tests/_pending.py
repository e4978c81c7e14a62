"""Build what a crashed run leaves in a persistent staging folder (for resume tests)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from artifact_uploader._journal import JOURNAL_FILE


def leave_pending(
    folder: Path,
    objects: dict[str, bytes],
    *,
    overwrite: bool = True,
    multipart_ids: tuple[str, ...] = (),
) -> list[Path]:
    """Write staged copies and their ``pending`` journal lines (plus ``multipart`` ids)."""
    (folder / "staged").mkdir(parents=True, mode=0o700, exist_ok=True)
    paths = []
    with open(folder / JOURNAL_FILE, "a") as f:
        for name, data in objects.items():
            sid = uuid.uuid4().hex
            path = folder / "staged" / f"{sid}-{Path(name).name}"
            path.write_bytes(data)
            paths.append(path)
            rec = {
                "op": "pending",
                "id": sid,
                "name": name,
                "staged": f"staged/{path.name}",
                "size": len(data),
                "overwrite": overwrite,
                "source": "src",
            }
            f.write(json.dumps(rec) + "\n")
            for upload_id in multipart_ids:
                f.write(json.dumps({"op": "multipart", "id": sid, "upload_id": upload_id}) + "\n")
    return paths
