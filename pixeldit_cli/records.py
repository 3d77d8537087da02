"""Sample records: what a sampling job has made so far, written as it goes, read back in one pass.

Each process appends its images to its own part file, `OUT/parts/RANK-TOKEN.part` (a new file for every
run, so two runs never write one file):

    header   32 bytes: b"PXDPART1", height, width, channels (uint32 each), 12 reserved bytes
    record   24 bytes: index (int64), label (int64), CRC-32 of the pixels (uint32), 4 reserved
             then height·width·channels uint8 pixels, HWC (the ADM layout)

Fixed-size records make a killed writer harmless: a torn last record is shorter than a record and a
corrupt one fails its CRC; both are dropped on the next run and the image is made again. Once the job's
`samples.npz` is assembled it holds every record, the part files are deleted, and a later run (a resume
after deleting outputs, or a larger --n) reads the npz back as a source of records. Reading back is one
directory listing and one sequential pass, so a 50K job's bookkeeping is linear in n.
"""

import contextlib
import os
import re
import signal
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PixelDiTError
from .folders import remove_own
from .io import is_complete_png, read_image, write_error
from .npz import NpzImages

MAGIC = b"PXDPART1"
_HEAD = struct.Struct("<8sIII12x")
_REC = struct.Struct("<qqI4x")
PNG_NAME = re.compile(r"^(\d{6,})(?:-[a-z0-9-]*)?\.png$")
PART_NAME = re.compile(r"^\d{5}-[0-9a-f]{12}\.part$")  # what PartWriter names its files: the only ones removed


class PartWriter:
    """Append records to this process's part file; `flush()` after each batch makes them durable."""

    def __init__(self, folder: Path, rank: int, height: int, width: int, channels: int = 3):
        self.folder, self.shape = Path(folder), (height, width, channels)
        self.path = self.folder / f"{rank:05d}-{uuid.uuid4().hex[:12]}.part"
        self.written: list[tuple[int, int, int]] = []  # (index, label, offset of the record)
        self.f = None

    def _open(self):
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "wb")
            self.f.write(_HEAD.pack(MAGIC, *self.shape))
        except OSError as e:
            raise write_error(self.path, e) from None

    def append(self, index: int, label: int, pixels_hwc: np.ndarray) -> None:
        if self.f is None:
            self._open()
        px = np.ascontiguousarray(pixels_hwc, dtype=np.uint8)
        if px.shape != self.shape:
            raise ValueError(f"record of shape {px.shape}, part holds {self.shape}")
        try:
            offset = self.f.tell()
            self.f.write(_REC.pack(index, label, zlib.crc32(px)))
            self.f.write(memoryview(px).cast("B"))
        except OSError as e:
            raise write_error(self.path, e) from None
        self.written.append((index, label, offset))
        _test_kill_hook(self.f, len(self.written))

    def flush(self) -> None:
        if self.f is not None:
            try:
                self.f.flush()
                os.fsync(self.f.fileno())
            except OSError as e:
                raise write_error(self.path, e) from None

    def close(self) -> None:
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None

    def entries(self) -> list[tuple[int, str, int, int]]:
        """(index, path, offset, label) of every record written: what rank 0 needs to assemble."""
        return [(i, str(self.path), off, lab) for i, lab, off in self.written]


def _test_kill_hook(f, count: int):
    """Tests only: PIXELDIT_TEST_KILL_AFTER_RECORDS=N SIGKILLs the process after N records and half of the next."""
    limit = os.environ.get("PIXELDIT_TEST_KILL_AFTER_RECORDS")
    if limit and count == int(limit) + 1:
        f.flush()
        f.truncate(f.tell() - 100)  # the last record torn, as a kill during its write leaves it
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Inventory:
    """Every sample a job folder holds, found with one listing of OUT and one of OUT/parts."""

    shape: tuple
    records: dict = field(default_factory=dict)  # index -> (path, offset, label); offset -1: row of samples.npz
    pngs: dict = field(default_factory=dict)  # index -> file name of a complete PNG
    dropped: int = 0  # torn or corrupt records ignored (they are made again)
    npz_rows: int = 0

    def record_bytes(self) -> int:
        return int(np.prod(self.shape))

    def add(self, entries) -> None:
        for i, path, off, lab in entries:
            self.records.setdefault(i, (path, off, lab))


def scan(out: Path, shape: tuple, label_of, want_png: bool) -> Inventory:
    """Read a job folder: complete PNGs, records in part files and rows of an earlier samples.npz.

    `label_of(i)` is the label sample i must have; a record with another label (an earlier run with
    another --n in balanced mode) does not count.
    """
    inv = Inventory(shape=tuple(shape))
    names = []
    with os.scandir(out) as it:
        names = [e.name for e in it if e.is_file()]
    if want_png:
        for name in names:
            m = PNG_NAME.match(name)
            if m and int(m.group(1)) not in inv.pngs and is_complete_png(out / name):
                inv.pngs[int(m.group(1))] = name
    if "samples.npz" in names:
        _scan_npz(out / "samples.npz", inv, label_of)
    parts = out / "parts"
    if parts.is_dir():
        with os.scandir(parts) as it:
            files = sorted(e.name for e in it if PART_NAME.match(e.name))
        for name in files:
            _scan_part(parts / name, inv, label_of)
    return inv


def _scan_part(path: Path, inv: Inventory, label_of) -> None:
    size = inv.record_bytes()
    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return  # a part whose writer died before its first record
        magic, *shape = _HEAD.unpack(head)
        if magic != MAGIC:
            raise PixelDiTError(f"{path} is not a pixeldit part file", "remove it, or choose another --out")
        if tuple(shape) != inv.shape:
            raise PixelDiTError(
                f"{path} holds {shape[1]}x{shape[0]} images, this job makes {inv.shape[1]}x{inv.shape[0]}",
                "choose another --out",
            )
        while True:
            offset = f.tell()
            head = f.read(_REC.size)
            if len(head) < _REC.size:
                break
            i, lab, crc = _REC.unpack(head)
            px = f.read(size)
            if len(px) < size:
                inv.dropped += 1  # torn by a kill mid-write
                break
            if zlib.crc32(px) != crc or label_of(i) != lab:
                inv.dropped += 1
                continue
            inv.records.setdefault(i, (str(path), offset, lab))


def _scan_npz(path: Path, inv: Inventory, label_of) -> None:
    try:
        src = NpzImages(path)
    except PixelDiTError:
        return  # an unreadable npz is rebuilt from the records
    if src.stored_channels != 3:
        return  # not one this job wrote (its npz is RGB): rebuilt from the records
    if tuple(src.shape[1:]) != inv.shape:
        raise PixelDiTError(
            f"{path} holds {src.shape[2]}x{src.shape[1]} images, this job makes {inv.shape[1]}x{inv.shape[0]}",
            "choose another --out",
        )
    labels = src.array("arr_1")
    if labels is None or len(labels) != len(src):
        return
    inv.npz_rows = len(src)
    for i, lab in enumerate(labels.tolist()):
        if label_of(i) == lab:
            inv.records.setdefault(i, (str(path), -1, lab))


def remove_parts(parts: Path) -> int:
    """Delete pixeldit's own part files (PART_NAME) and the folder if that leaves it empty; nothing else."""
    n = remove_own(parts, PART_NAME.match)
    with contextlib.suppress(OSError):  # not empty (a user's file) or not there: leave it
        parts.rmdir()
    return n


class RecordReader:
    """Read records back by index (open files are kept; npz rows are located once)."""

    def __init__(self, inv: Inventory, out: Path):
        self.inv, self.out, self.files, self.npz = inv, Path(out), {}, None

    def pixels(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3) of sample i: from a record, a row of samples.npz, or (older folders) its PNG."""
        size = self.inv.record_bytes()
        if i in self.inv.records:
            path, off, _ = self.inv.records[i]
            if off < 0:
                if self.npz is None:
                    self.npz = NpzImages(path)
                    self.npz_file = self.npz.zf.open("arr_0.npy")
                self.npz_file.seek(self.npz.offset + i * size)
                buf = self.npz_file.read(size)
            else:
                f = self.files.get(path) or self.files.setdefault(path, open(path, "rb"))
                f.seek(off + _REC.size)
                buf = f.read(size)
            if len(buf) != size:
                raise PixelDiTError(f"{path} changed while being read (sample {i})", "re-run the same command")
            return np.frombuffer(buf, dtype=np.uint8).reshape(self.inv.shape)

        img, _ = read_image(self.out / self.inv.pngs[i])
        return img.permute(1, 2, 0).numpy()

    def close(self):
        for f in self.files.values():
            f.close()
        if self.npz is not None:
            self.npz_file.close()
            self.npz.zf.close()
        self.files, self.npz = {}, None
