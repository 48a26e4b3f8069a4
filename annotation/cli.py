"""`hv annotate`: Label Studio projects for 308 keypoints and 28 body-part classes, round trip into shards.

    hv annotate config --task pose|seg|bbox [--keypoints SUBSET] [--vocab goliath28|lip20]
    hv annotate serve [--port 8080] [--data-dir runs/label-studio]
    hv annotate push SHARDS... --project NAME --task pose|seg|bbox [--url URL] [--media-root DIR]
    hv annotate predict SHARDS... --project NAME --task pose|seg [--model-version V]
    hv annotate pull --project NAME --out DIR [--all] [--shards ORIGINALS...]
    hv annotate qa --project NAME [--out report.json]
    hv annotate backend --checkpoint RUN [--port 9090] [--media-root DIR]
        [--loop-project NAME --loop-out DIR loop.loop_after=N]    # a loop cycle every N annotations (webhook)
    hv annotate connect --project NAME --backend http://127.0.0.1:9090
    hv annotate loop --project NAME --checkpoint CURRENT --out DIR [loop.finetune_overrides=[steps=200] ...]

The API key comes from LABEL_STUDIO_API_KEY only; the URL from --url or LABEL_STUDIO_URL. Every action
takes `--config FILE` and `key=value` overrides (annotation/config.py); for push and predict
write them among the shard paths, before the options: `hv annotate push a.tar batch_size=200 --project P`.
Exit codes: 0 done, 1 done but some samples were skipped (each listed with its reason), 2 failed (nothing half-written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import sys
from pathlib import Path

from annotation.errors import AnnotationError
from data_engine import schema
from data_engine.config import ConfigError

log = logging.getLogger(__name__)


TASK_CHOICES = ("pose", "seg", "bbox")
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("annotate", help="Label Studio annotation: config, serve, push, predict, pull, qa")
    sub = p.add_subparsers(dest="annotate_command", metavar="ACTION", required=True)

    config = sub.add_parser("config", help="print a Label Studio labeling config (XML) built from the schema")
    config.add_argument("--task", choices=TASK_CHOICES, required=True)
    config.add_argument("--keypoints", default=None, metavar="SUBSET", help="keypoint subset (default: all 308)")
    config.add_argument("--vocab", default=None, choices=schema.VOCABULARY_NAMES)
    _config_args(config)
    config.set_defaults(func=_config)

    serve = sub.add_parser("serve", help="start a local Label Studio on 127.0.0.1 (SQLite); Ctrl-C stops it")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", default="runs/label-studio")
    serve.add_argument("--media-root", default=None, help="folder served as local files (default DATA_DIR/media)")
    serve.add_argument("--username", default="admin@localhost")
    serve.add_argument("--label-studio-bin", default=None, help="the label-studio executable (default .venv-ls)")
    serve.set_defaults(func=_serve)

    push = sub.add_parser("push", help="create one task per sample (idempotent, batched)")
    push.add_argument("shards", nargs="+", metavar="SHARDS")
    push.add_argument("--task", choices=TASK_CHOICES, required=True)
    push.add_argument("--keypoints", default=None, metavar="SUBSET")
    push.add_argument("--vocab", default=None, choices=schema.VOCABULARY_NAMES)
    push.add_argument("--media-root", default=None, help="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    _server_args(push)
    push.set_defaults(func=_push)

    predict = sub.add_parser("predict", help="import pre-annotations from shards' pose.json / seg.png")
    predict.add_argument("shards", nargs="+", metavar="SHARDS")
    predict.add_argument("--task", choices=("pose", "seg"), required=True)
    predict.add_argument("--model-version", default=None, help="default: shard-labels, or the checkpoint's name")
    predict.add_argument(
        "--checkpoint",
        default=None,
        help="a fine-tuned run or model.safetensors: predict with the model, not the shards",
    )
    predict.add_argument("--device", default="cpu", help="with --checkpoint: cpu or cuda")
    _server_args(predict)
    predict.set_defaults(func=_predict)

    pull = sub.add_parser("pull", help="write finished annotations as annotated shards")
    pull.add_argument("--out", required=True, type=Path)
    pull.add_argument("--all", action="store_true", help="also keep every annotator's labels (ann<ID>.* members)")
    pull.add_argument("--shards", nargs="+", default=None, help="where the pushed shards live now, if they moved")
    pull.add_argument("--media-root", default=None, help="the folder push copied images to (holds its shard record)")
    _server_args(pull)
    pull.set_defaults(func=_pull)

    qa = sub.add_parser("qa", help="agreement (OKS per keypoint group, IoU per class) and validation problems")
    qa.add_argument("--out", type=Path, default=None, help="write the full report as JSON here")
    _server_args(qa)
    qa.set_defaults(func=_qa)

    backend = sub.add_parser("backend", help="serve a checkpoint as a Label Studio ML backend on 127.0.0.1")
    backend.add_argument("--checkpoint", required=True, help="a fine-tuned run folder or model.safetensors")
    backend.add_argument("--port", type=int, default=9090)
    backend.add_argument("--media-root", default=None, help="the folder push copies images to (the server's root)")
    backend.add_argument("--device", default="cpu", help="cpu or cuda")
    backend.add_argument("--keypoint-threshold", type=float, default=0.3, help="heatmap peak below: not placed")
    backend.add_argument("--loop-project", default=None, help="with loop.loop_after=N: the project a cycle pulls")
    backend.add_argument(
        "--loop-out", default=None, type=Path, help="a loop folder (`hv annotate loop --out`): serve its newest model"
    )
    backend.add_argument("--url", default=None, help="for the loop: Label Studio's URL (default: LABEL_STUDIO_URL)")
    _config_args(backend)
    backend.set_defaults(func=_backend)

    connect = sub.add_parser("connect", help="register an ML backend on a project (Label Studio checks it)")
    connect.add_argument("--backend", required=True, help="the backend's URL, e.g. http://127.0.0.1:9090")
    connect.add_argument("--title", default=None, help="its name in Label Studio (default: the model version)")
    _server_args(connect)
    connect.set_defaults(func=_connect)

    loop = sub.add_parser("loop", help="one cycle: pull new annotations, fine-tune, pre-annotate unlabelled tasks")
    loop.add_argument("--checkpoint", required=True, help="the model to improve (later cycles start from OUT's newest)")
    loop.add_argument("--out", required=True, type=Path, help="the loop's folder: cycle-NNN/ and cycles.jsonl")
    loop.add_argument("--media-root", default=None, help="the folder push copied images to (holds its shard record)")
    _server_args(loop)
    loop.set_defaults(func=_loop)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file of settings (configs/annotation/default.yaml)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="settings overrides")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="Label Studio project title")
    p.add_argument("--url", default=None, help="server URL (default: LABEL_STUDIO_URL)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _config_args(p)


def _settings(args: argparse.Namespace):
    from annotation.config import load_config

    # Positional shards and positional overrides share the tail of the line: key=value words are overrides.
    shard_words = getattr(args, "shards", None)
    if isinstance(shard_words, list) and hasattr(args, "task"):
        args.overrides = [w for w in shard_words if _OVERRIDE.match(w)] + list(args.overrides)
        args.shards = [w for w in shard_words if not _OVERRIDE.match(w)]
    flags = {"url": "url", "keypoint_set": "keypoints", "vocabulary": "vocab", "media_root": "media_root"}
    return load_config(
        args.config, args.overrides, **{key: getattr(args, flag, None) or None for key, flag in flags.items()}
    )


def _guarded(action: str, run) -> int:
    try:
        return run()
    except (AnnotationError, ConfigError) as e:
        print(f"hv annotate {action}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"hv annotate {action}: error: {e}", file=sys.stderr)
        return 2


def _studio(args: argparse.Namespace, config):
    from annotation.client import Studio

    return Studio.from_env(config.url or None, timeout_s=config.timeout_s)


def _report_skips(action: str, items: list[dict]) -> int:
    for item in items:
        where = f"{item.get('shard')}: " if item.get("shard") else ""
        log.warning("hv annotate %s: skipped %s%s: %s", action, where, item.get("key") or "-", item["reason"])
    return 1 if items else 0


def _config(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.labeling import label_config

        config = _settings(args)
        sys.stdout.write(label_config(args.task, config.keypoint_set, config.vocabulary))
        return 0

    return _guarded("config", run)


def _push(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.push import push

        config = _settings(args)
        with _studio(args, config) as studio:
            report = push(studio, args.shards, args.project, args.task, config, progress=not args.quiet)
        print(report.summary())
        return _report_skips("push", report.bad)

    return _guarded("push", run)


def _predict(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.predict import predict

        config = _settings(args)
        model_version = args.model_version or "shard-labels"
        kwargs = {}
        if args.checkpoint:
            from annotation.model_predictor import checkpoint_version, model_predictor

            try:
                kwargs["predictor"] = model_predictor(args.checkpoint, args.task, device=args.device)
            except (OSError, ValueError) as e:
                raise AnnotationError(f"cannot load the model: {e}") from None
            model_version = args.model_version or checkpoint_version(args.checkpoint)
        with _studio(args, config) as studio:
            report = predict(
                studio, args.shards, args.project, args.task, config, model_version, progress=not args.quiet, **kwargs
            )
        print(report.summary())
        return _report_skips("predict", report.skipped)

    return _guarded("predict", run)


def _pull(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.pull import REPORT_NAME, pull

        config = _settings(args)
        with _studio(args, config) as studio:
            report = pull(
                studio,
                args.project,
                args.out,
                config,
                keep_all=args.all,
                shard_override=args.shards,
                progress=not args.quiet,
            )
        print(report.summary())
        print(f"shards: {len(report.shards)} in {args.out}; report: {args.out / REPORT_NAME}")
        return _report_skips("pull", report.bad)

    return _guarded("pull", run)


def _qa(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.qa import qa, write_report
        from data_engine.config import save_config

        config = _settings(args)
        with _studio(args, config) as studio:
            report = qa(studio, args.project, config)
        if args.out is not None:
            write_report(report, args.out)
            save_config(config, args.out.with_name(f"{args.out.stem}.config.yaml"))
        print(json.dumps(report["summary"], indent=1))
        return 0

    return _guarded("qa", run)


def _serve(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.client import api_key_from_env
        from annotation.server import (
            DATABASE_NAME,
            LabelStudioServer,
            ServerSettings,
            find_binary,
            ignoring_stop_signals,
            stop_signals_interrupt,
        )

        binary = find_binary(args.label_studio_bin)
        token = api_key_from_env()
        data_dir = Path(args.data_dir).resolve()
        media_root = Path(args.media_root).resolve() if args.media_root else data_dir / "media"
        fresh = not (data_dir / DATABASE_NAME).exists()
        password = os.environ.get("LABEL_STUDIO_PASSWORD", "")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)  # only used when the data dir is new: the user is made once
        settings = ServerSettings(
            data_dir=data_dir, media_root=media_root, port=args.port, username=args.username, binary=binary
        )
        server = LabelStudioServer(settings, token=token, password=password)
        print(
            f"hv annotate serve: starting Label Studio on http://127.0.0.1:{args.port} (data {data_dir}) ...",
            flush=True,
        )
        with stop_signals_interrupt():
            try:
                url = server.start()
                _print_login(url, args.username, media_root, fresh, password if generated else None)
                assert server.process is not None
                code = server.process.wait()
                print(f"hv annotate serve: Label Studio exited with code {code}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                log.info("hv annotate serve: stopping Label Studio ...")
                return 0
            finally:
                with ignoring_stop_signals():
                    server.stop()

    return _guarded("serve", run)


def _print_login(url: str, username: str, media_root: Path, fresh: bool, generated_password: str | None) -> None:
    print(f"\nLabel Studio is up: {url}")
    if fresh:
        shown = generated_password or "the value of LABEL_STUDIO_PASSWORD"
        print(f"  log in as {username} with password {shown}")
    else:
        print(f"  log in as {username} with the password this data dir was created with")
    print("  for push / predict / pull / qa in another shell:")
    print(f"    export LABEL_STUDIO_URL={url}")
    print(f"    export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={media_root}")
    print("    (and the same LABEL_STUDIO_API_KEY)")
    print("  Ctrl-C (or SIGTERM / SIGHUP) stops the server.", flush=True)


def _backend(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.backend import BackendApp, LoopFollower, serve
        from annotation.backend_model import BackendModel
        from annotation.push import resolve_media_root
        from annotation.server import LOOPBACK, port_is_free, stop_signals_interrupt

        config = _settings(args)
        media_root = resolve_media_root(args.media_root or "")
        if config.loop.loop_after and not (args.loop_project and args.loop_out):
            raise AnnotationError("loop.loop_after needs --loop-project and --loop-out (the project and loop folder)")
        if not port_is_free(args.port):
            raise AnnotationError(f"port {args.port} on {LOOPBACK} is taken; pick another with --port")
        try:
            model = BackendModel(
                args.checkpoint, media_root, device=args.device, keypoint_threshold=args.keypoint_threshold
            )
        except (OSError, ValueError) as e:
            raise AnnotationError(f"cannot load the model: {e}") from None
        trigger = follower = None
        if config.loop.loop_after:
            trigger = _loop_trigger(args, config, model)
        if args.loop_out is not None:
            follower = LoopFollower(args.loop_out, model)
            follower.check()
        url = f"http://{LOOPBACK}:{args.port}"
        print(f"hv annotate backend: {model.model_version} ({', '.join(model.model.tasks)}) on {url}", flush=True)
        print(f"  connect a project: hv annotate connect --project NAME --backend {url}", flush=True)
        with stop_signals_interrupt():
            try:
                serve(BackendApp(model, trigger, follower), args.port)
            except KeyboardInterrupt:
                log.info("hv annotate backend: stopped")
        return 0

    return _guarded("backend", run)


def _loop(args: argparse.Namespace) -> int:
    def run() -> int:
        from annotation.loop import run_cycle

        config = _settings(args)
        with _studio(args, config) as studio:
            record = run_cycle(studio, args.project, args.checkpoint, args.out, config, progress=not args.quiet)
        if record["status"] != "done":
            print(f"project {args.project!r}: no annotations finished since the last cycle; nothing to train")
            return 0
        pulled, trained, pushed = record["pulled"], record["trained"], record["pushed"]
        print(
            f"cycle {record['cycle']}: pulled {pulled['tasks']} labelled tasks ({len(pulled['new_task_ids'])} new), "
            f"trained {trained['steps']} steps -> {trained['checkpoint']}, {pushed['created']} predictions of "
            f"{pushed['model_version']} pushed ({pushed['already_there']} already there)"
        )
        return _report_skips("loop", pulled["not_written"] + pushed["skipped"])

    return _guarded("loop", run)


def _loop_trigger(args: argparse.Namespace, config, model):
    """A LoopTrigger running `hv annotate loop`'s cycle for --loop-project into --loop-out, then serving its model."""
    from annotation.backend import LoopTrigger
    from annotation.client import Studio, api_key_from_env, resolve_url
    from annotation.loop import run_cycle

    url, key = resolve_url(config.url or None), api_key_from_env()  # checked now, not at the first trigger

    def cycle() -> dict:
        with Studio(url, key, timeout_s=config.timeout_s) as studio:
            record = run_cycle(studio, args.loop_project, args.checkpoint, args.loop_out, config)
        if record["status"] == "done":
            log.info("hv annotate backend: cycle %s done", record["cycle"])  # the follower serves its model
        return record

    print(f"  loop: a cycle of {args.loop_project!r} into {args.loop_out} every {config.loop.loop_after} annotations")
    return LoopTrigger(config.loop.loop_after, cycle)


def _connect(args: argparse.Namespace) -> int:
    def run() -> int:
        config = _settings(args)
        with _studio(args, config) as studio:
            studio.check()
            project = studio.require_project(args.project)
            backend = studio.connect_ml_backend(int(project["id"]), args.backend, args.title)
        print(f"project {args.project!r}: ML backend {backend['id']} at {backend['url']} ({backend.get('state')})")
        return 0

    return _guarded("connect", run)
