"""The server's environment: paths Label Studio compares by prefix must be absolute."""

from __future__ import annotations

import os
from pathlib import Path

from annotation.server import LabelStudioServer, ServerSettings


def test_relative_folders_reach_label_studio_as_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    # `hv annotate serve --data-dir runs/ls` from a project folder: a relative document root made Label
    # Studio refuse every local-files storage that `push` created with absolute paths.
    monkeypatch.chdir(tmp_path)
    settings = ServerSettings(data_dir=Path("runs/ls"), media_root=Path("runs/ls/media"), port=1)
    env = LabelStudioServer(settings, token="0" * 40, password="pw").environment()
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "runs/ls/media")
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "runs/ls")
    assert all(os.path.isabs(env[k]) for k in ("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_BASE_DATA_DIR"))
