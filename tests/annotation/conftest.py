"""Fixtures: small shards made here, and one real Label Studio server on 127.0.0.1 for the session.

The first start of a data dir runs ~35 s of migrations, so a migrated data dir (admin user and test token
included) is cached under ~/.cache/humanvision-test/label-studio-template and copied per session.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from annotation.server import LabelStudioServer, ServerSettings, find_binary, free_port
from data_engine import schema
from data_engine.sample import PersonPose, Pose, Sample
from data_engine.shards import ShardWriter

# A test-only key for a throw-away loopback server; tests check it never shows in our outputs.
TEST_TOKEN = "0123456789abcdef0123456789abcdef0badc0de"
TEST_PASSWORD = "hv-test-password"
CACHE = Path(os.environ.get("HV_TEST_CACHE", Path.home() / ".cache" / "humanvision-test"))
TEMPLATE = CACHE / "label-studio-template"


@dataclass
class LiveServer:
    url: str
    media_root: Path
    token: str
    log: Path


def _binary() -> Path:
    try:
        return find_binary()
    except Exception as e:  # the server venv is made by `make setup`: fail loudly, a skip would hide a missing step
        pytest.fail(str(e))


def ensure_template() -> Path:
    """A migrated data dir holding the admin user and TEST_TOKEN (built once per machine, under a lock)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (TEMPLATE / "label_studio.sqlite3").exists():
            build = CACHE / f"template-build-{os.getpid()}"
            shutil.rmtree(build, ignore_errors=True)
            settings = ServerSettings(
                data_dir=build,
                media_root=build / "media",
                port=free_port(),
                binary=_binary(),
                log_path=CACHE / "build.log",
            )
            with LabelStudioServer(settings, token=TEST_TOKEN, password=TEST_PASSWORD):
                pass
            shutil.rmtree(build / "media", ignore_errors=True)
            shutil.rmtree(TEMPLATE, ignore_errors=True)
            build.rename(TEMPLATE)
    return TEMPLATE


def start_from_template(root: Path, log_name: str = "server.log") -> LabelStudioServer:
    data_dir = root / "data"
    shutil.copytree(ensure_template(), data_dir)
    settings = ServerSettings(
        data_dir=data_dir, media_root=root / "media", port=free_port(), binary=_binary(), log_path=root / log_name
    )
    server = LabelStudioServer(settings, token=TEST_TOKEN, password=TEST_PASSWORD)
    server.start()
    return server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("label-studio")
    server = start_from_template(root)
    try:
        yield LiveServer(
            url=server.url, media_root=server.settings.media_root, token=TEST_TOKEN, log=root / "server.log"
        )
    finally:
        server.stop()


@pytest.fixture
def ls_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    monkeypatch.setenv("LABEL_STUDIO_URL", live_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", live_server.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(live_server.media_root))
    return live_server


# ------------------------------------------------------------------------------------------- test data


def random_pose(rng: np.random.Generator, width: int, height: int, keypoint_set: str = "all") -> Pose:
    k = len(schema.subset(keypoint_set))
    kp = np.zeros((k, 3), dtype=np.float32)
    kp[:, 0] = rng.uniform(0.3, width - 0.3, k)
    kp[:, 1] = rng.uniform(0.3, height - 0.3, k)
    kp[:, 2] = rng.choice([0, 1, 2], size=k, p=[0.2, 0.3, 0.5])
    kp[kp[:, 2] == 0, :2] = 0
    return Pose(
        keypoint_set=keypoint_set, persons=[PersonPose(bbox=(0.0, 0.0, float(width), float(height)), keypoints=kp)]
    )


def all_class_seg(rng: np.random.Generator, width: int, height: int, classes: int = 28) -> np.ndarray:
    """Every class present, in random blocks, some pixels ignored."""
    seg = rng.integers(0, classes, size=(height, width)).astype(np.uint8)
    seg = np.repeat(np.repeat(seg[: height // 4 + 1, : width // 4 + 1], 4, 0), 4, 1)[:height, :width].copy()
    seg.reshape(-1)[:classes] = np.arange(classes)
    seg[-2:, -3:] = 255
    return seg


def make_shards(folder: Path, count: int, seed: int = 0, with_labels: bool = True, size=(48, 36)) -> list[Sample]:
    rng = np.random.default_rng(seed)
    width, height = size
    samples = []
    with ShardWriter(str(folder / "curated"), max_count=3) as writer:
        for i in range(count):
            image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            sample = Sample(
                key=f"{seed:04x}{i:04x}" + "ab" * 4,
                image=image,
                meta={"source": {"uri": f"test://{seed}/{i}"}, "split": "train"},
                image_format="png" if i % 2 else "jpg",
                pose=random_pose(rng, width, height) if with_labels else None,
                seg=all_class_seg(rng, width, height) if with_labels else None,
            )
            writer.write(sample)
            samples.append(sample)
    return samples


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (barely trained) pose + seg model: two steps of `hv train finetune` in this process."""
    from train.finetune import run
    from train.finetune_config import load_finetune_config

    folder = tmp_path_factory.mktemp("ckpt")
    make_shards(folder / "train", 4, seed=11, size=(48, 64))
    cfg = load_finetune_config(
        "configs/finetune/multi_tiny.yaml",
        [
            f"data.shards={folder / 'train'}",
            "tasks=[pose,seg]",
            "pose.keypoint_set=coco17",
            "steps=2",
            "optim.warmup_steps=0",
            "batch_size=2",
            "model.image_size=[64,48]",
            "model.depth=1",
            "model.head_channels=16",
            "progress=false",
            "tensorboard=false",
        ],
    )
    run(cfg, str(folder / "run"))
    return folder / "run"
