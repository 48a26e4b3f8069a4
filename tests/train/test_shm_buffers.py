"""DeepSpeed's CPU all-reduce buffers in /dev/shm: a rank unlinks its own once every peer has mapped it, and
orphans left by older runs are removed only when no process maps them."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time

from train.distributed import SHM_DIR, SHM_PREFIX, remove_orphaned_shm_buffers

WORLD_OF_ONE = """
import os
from pathlib import Path
from train.distributed import init_distributed, shm_buffer_path
init_distributed()
maps = Path("/proc/self/maps").read_text()
print(shm_buffer_path(0).name in maps, shm_buffer_path(0).exists())
"""


def test_a_world_of_one_keeps_its_mapping_and_leaves_no_file() -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", LOCAL_SIZE="1")  # the launcher's variable: "all ranks local"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", WORLD_OF_ONE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    mapped, file_left = done.stdout.split()[-2:]
    assert mapped == "True"  # DeepSpeed built its shm op and maps the buffer: the check below is not vacuous
    assert file_left == "False"


def test_orphans_go_and_mapped_or_foreign_files_stay() -> None:
    uid = os.getuid()
    port = 60000 + os.getpid() % 5000  # not a port any live run of this test session uses for its buffers
    orphan = SHM_DIR / f"{SHM_PREFIX}{uid}_127.0.0.1_{port}_0"
    in_use = SHM_DIR / f"{SHM_PREFIX}{uid}_127.0.0.1_{port}_1"
    young = SHM_DIR / f"{SHM_PREFIX}{uid}_127.0.0.1_{port}_2"
    other_user = SHM_DIR / f"{SHM_PREFIX}{uid + 1}_127.0.0.1_{port}_0"
    other_name = SHM_DIR / f"not_deepspeed_{port}"
    made = [orphan, in_use, young, other_user, other_name]
    try:
        for path in made:
            path.write_bytes(b"\0" * 4096)
        old = time.time() - 3600
        for path in (orphan, in_use, other_user, other_name):
            os.utime(path, (old, old))
        with open(in_use, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mapping:
            removed = remove_orphaned_shm_buffers()
            assert mapping[0] == 0  # still mapped and readable
        assert orphan in removed and not orphan.exists()
        assert in_use.exists() and young.exists() and other_user.exists() and other_name.exists()
        assert {in_use, young, other_user, other_name}.isdisjoint(removed)
    finally:
        for path in made:
            path.unlink(missing_ok=True)
