"""Hostile files made cheaply: image bombs (small files declaring huge images), GNU sparse tar members, and a
peak-memory probe for a command run in a child process."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tarfile
import zlib

from PIL import Image


def jpeg_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A real, decodable JPEG of width x height (flat grey: a few hundred KB). Built in this process (one
    8-bit plane, width*height bytes) so that the reader under test decodes 3x that as RGB."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def png16_rgb_bomb(width: int = 10000, height: int = 10000) -> bytes:
    """A real, decodable 16-bit RGB PNG of width x height (all zero), streamed row by row through zlib so that
    making it never holds the image: about 0.6 MB for 10000x10000 (600 MB decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows_per_block = 100
    block = b"\x00" * ((1 + width * 6) * rows_per_block)  # filter byte + 3 channels x 2 bytes, per row
    z = zlib.compressobj(9)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)  # the zlib header and the first block
    # After a full flush the compressor starts afresh, so every further block compresses to the same bytes:
    # compress one and repeat it instead of pushing 600 MB through zlib.
    repeat = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(height, rows_per_block)
    assert rest == 0, "height must be a multiple of 100"
    total = len(block) * blocks
    adler = ((total % 65521) << 16) | 1  # Adler-32 of all-zero data
    # b"\x03\x00": an empty final block with fixed Huffman codes, then the checksum.
    idat = first + repeat * (blocks - 1) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def add_sparse_member(tar: tarfile.TarFile, name: str, declared: int, stored: bytes = b"\x01" * 512) -> None:
    """Append an old-GNU sparse member: `stored` bytes on disk that a reader expands to `declared` bytes."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(stored)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # one data block at offset 0 ...
    header[398:410] = tarfile.itn(len(stored), 12, tarfile.GNU_FORMAT)  # ... of the stored bytes
    header[483:495] = tarfile.itn(declared, 12, tarfile.GNU_FORMAT)  # the real (expanded) size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    tar.fileobj.write(bytes(header))
    tar.fileobj.write(stored + b"\0" * (-len(stored) % 512))
    tar.offset += len(header) + len(stored) + (-len(stored) % 512)


_PROBE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(f"{code.returncode}\\n{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.stderr.write(code.stderr + code.stdout)
"""


def run_measured(*argv: str, env: dict | None = None) -> tuple[int, int, str]:
    """Run `hv ARGV` in a grandchild; (exit code, its peak resident memory in MB, its stdout+stderr). The probe
    child runs nothing else, so RUSAGE_CHILDREN there is the command's own peak, not this test session's."""
    hv = [sys.executable, "-c", "import humanvision_cli; humanvision_cli.main()", *argv]
    out = subprocess.run([sys.executable, "-c", _PROBE, *hv], capture_output=True, text=True, env=env, check=True)
    code, peak_kb = out.stdout.split()
    return int(code), int(peak_kb) // 1024, out.stderr
