"""The demo's annotation stage: a local Label Studio on 127.0.0.1 that keeps running after the demo,
the curated images pushed as pose tasks, and the demo's fine-tuned model's pre-annotations on them.

The API key comes from LABEL_STUDIO_API_KEY when set, else a random one for this server; it is passed to
the commands through their environment and never printed or written. The login password likewise comes
from LABEL_STUDIO_PASSWORD or is random, and is shown once on the terminal (not in the logs).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from demo.stages import StageLog, hv_command, run_stage

PROJECT = "humanvision demo: pose"


def annotate_stage(paths: Any, log: StageLog) -> dict[str, Any]:
    from annotation.errors import AnnotationError
    from annotation.server import DEFAULT_USERNAME, LabelStudioServer, ServerSettings, find_binary, free_port

    try:
        find_binary()
    except AnnotationError as e:
        print(f"    skipped: {e}", flush=True)
        return {"skipped": str(e)}
    token = os.environ.get("LABEL_STUDIO_API_KEY") or secrets.token_hex(20)
    password = os.environ.get("LABEL_STUDIO_PASSWORD") or secrets.token_urlsafe(12)
    root = paths.out / "labelstudio"
    settings = ServerSettings(
        data_dir=root / "data",
        media_root=root / "media",
        port=free_port(),
        log_path=paths.out / "logs" / "labelstudio-server.log",
    )
    server = LabelStudioServer(settings, token=token, password=password)
    try:
        url = server.start()
    except AnnotationError as e:
        # A data dir made by an earlier demo run holds that run's token; start afresh rather than fail.
        if "refuses" not in str(e):
            raise
        import shutil

        shutil.rmtree(settings.data_dir)
        url = server.start()
    assert server.process is not None
    (root / "server.pid").write_text(str(server.process.pid))
    env = {"LABEL_STUDIO_API_KEY": token, "LABEL_STUDIO_URL": url}
    common = ["--project", PROJECT, "--task", "pose", "--quiet"]
    shards = str(paths.curate / "shards")
    run_stage(
        log, "annotate-push", hv_command("annotate", "push", shards, *common, "--media-root", str(root / "media")), env
    )
    run_stage(
        log,
        "annotate-predict",
        hv_command(
            "annotate",
            "predict",
            shards,
            *common,
            "--checkpoint",
            str(paths.finetune("pretrained")),
            "--model-version",
            "demo-finetune-pretrained",
        ),
        env,
    )
    print(
        f"\n    Label Studio is running at {url} (project {PROJECT!r})\n"
        f"    log in as {DEFAULT_USERNAME} with password {password}\n"
        f"    stop it with: kill -INT -{server.process.pid}",
        flush=True,
    )
    # Deliberately not stopped: the server is for the user to look at after the demo ends.
    return {
        "url": url,
        "project": PROJECT,
        "username": DEFAULT_USERNAME,
        "pid": server.process.pid,
        "stop": f"kill -INT -{server.process.pid}",
    }
