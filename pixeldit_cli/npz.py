"""ADM-format .npz I/O without holding 39 GB: read `arr_0` (uint8 NHWC) in batches, write it a row at a
time (NpzWriter), and read PNG folders through the same interface.

An npz is a zip of .npy members. `arr_0.npy`'s header gives dtype/shape/order; the raw bytes that follow
are read a batch at a time (deflated members decompress while reading). Small keys (mu, sigma, …)
load normally.
"""

import zipfile
from pathlib import Path

import numpy as np

from .errors import PixelDiTError
from .io import IMAGE_EXTENSIONS, atomic_file, read_image


def _read_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    try:  # v3 (utf-8 field names) has no public reader
        from numpy.lib._format_impl import _read_array_header  # noqa: PLC0415 (numpy version fallback)
    except ImportError:
        from numpy.lib.format import _read_array_header  # noqa: PLC0415 (numpy version fallback)
    return _read_array_header(f, version)


class NpzImages:
    """Iterate batches of uint8 (B, H, W, 3) from an ADM npz's arr_0, in file order.

    Gray arrays — (N, H, W) or (N, H, W, 1), e.g. a 1-channel model's or MNIST-style references — are
    read as RGB with the channel replicated, as Inception needs; `stored_channels` says what the file holds."""

    def __init__(self, path, require_images: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise PixelDiTError(f"{self.path} does not exist")
        try:
            self.zf = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise PixelDiTError(f"{self.path} is not an .npz file (not a zip archive)") from None
        names = self.zf.namelist()
        self.keys = [n[:-4] for n in names if n.endswith(".npy")]
        if "arr_0.npy" not in names and not require_images and "mu.npy" in names:
            self.shape, self.offset, self.stored_channels = (0, 0, 0, 3), 0, 3  # a statistics-only reference
            return
        if "arr_0.npy" not in names:
            raise PixelDiTError(
                f"{self.path} has no arr_0 (keys: {', '.join(self.keys) or 'none'})",
                "ADM files keep images in arr_0 as uint8 NHWC",
            )
        with self.zf.open("arr_0.npy") as f:
            shape, fortran, dtype = _read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8:
            raise PixelDiTError(
                f"{self.path}: arr_0 is {dtype}, expected uint8 images in 0..255",
                "float images must be converted with the release's rounding: clip((x + 1)·127.5 + 0.5, 0, 255)",
            )
        if len(shape) == 3:
            shape = (*shape, 1)
        if len(shape) != 4 or shape[-1] not in (1, 3):
            raise PixelDiTError(
                f"{self.path}: arr_0 has shape {shape}, expected (N, H, W, 3) RGB or (N, H, W[, 1]) gray"
            )
        if fortran:
            raise PixelDiTError(f"{self.path}: arr_0 is Fortran-ordered", "save it C-ordered (np.ascontiguousarray)")
        self.stored_channels = shape[-1]
        self.shape = (*shape[:3], 3)

    def __len__(self):
        return self.shape[0]

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        n, h, w, _ = self.shape
        c = self.stored_channels
        stop = n if stop is None else min(stop, n)
        per = h * w * c
        with self.zf.open("arr_0.npy") as f:
            f.seek(self.offset + start * per)  # seekable for stored members; deflated ones re-read
            for i in range(start, stop, batch_size):
                k = min(batch_size, stop - i)
                buf = f.read(k * per)
                if len(buf) != k * per:
                    raise PixelDiTError(f"{self.path} is truncated (arr_0 ends before image {i + len(buf) // per})")
                rows = np.frombuffer(buf, dtype=np.uint8).reshape(k, h, w, c)
                yield rows if c == 3 else np.repeat(rows, 3, axis=3)

    def array(self, key: str):
        if key + ".npy" not in self.zf.namelist():
            return None
        try:
            with self.zf.open(key + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # an object array (pickle) or a torn member
            raise PixelDiTError(
                f"{self.path}: array {key!r} is not a plain numeric array ({str(e).splitlines()[0][:80]})",
                "write it with numpy, without dtype=object",
            ) from None


class FolderImages:
    """A folder of PNG/JPEG images (our `sample` output), sorted by name, as uint8 NHWC batches."""

    EXT = set(IMAGE_EXTENSIONS)

    def __init__(self, path):
        self.path = Path(path)
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in self.EXT and p.name != "grid.png")
        if not self.files:
            raise PixelDiTError(f"{self.path} holds no images")
        first = self._read(self.files[0])
        self.shape = (len(self.files), *first.shape)
        self.keys = []

    @staticmethod
    def _read(p):
        return read_image(p)[0].permute(1, 2, 0).numpy()  # 16-bit, palette, gray, alpha -> 8-bit RGB

    def __len__(self):
        return len(self.files)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None):
        stop = len(self.files) if stop is None else min(stop, len(self.files))
        for i in range(start, stop, batch_size):
            imgs = [self._read(p) for p in self.files[i : min(i + batch_size, stop)]]
            if any(im.shape != imgs[0].shape for im in imgs) or imgs[0].shape != self.shape[1:]:
                raise PixelDiTError(f"{self.path}: images have different sizes", "all samples must share one size")
            yield np.stack(imgs)

    def array(self, key):
        return None


def open_images(path, require_images: bool = True):
    p = Path(path)
    if p.is_dir():
        return FolderImages(p)
    if not p.exists():
        raise PixelDiTError(f"{p} does not exist")
    return NpzImages(p, require_images)


def write_npz(path, images, **arrays):
    """Write an ADM-compatible npz: arr_0 uint8 NHWC plus extra arrays (mu, sigma, ...)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise PixelDiTError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    np.savez(path, arr_0=images, **arrays)


class NpzWriter:
    """Write an .npz (a zip of .npy members, stored) a row at a time: `arr_0` never has to fit in RAM.

    with NpzWriter(path) as w:
        rows = w.stream("arr_0", (n, H, W, 3), np.uint8)
        for block in ...: rows.write(block)
        w.add("arr_1", labels)
    The file appears at `path` only when every member is complete (atomic_file).
    """

    def __init__(self, path, durable: bool = True):
        self.path, self.durable = Path(path), durable
        self._ctx = self._zip = self._open = None

    def __enter__(self):
        self._ctx = atomic_file(self.path, self.durable)
        f = self._ctx.__enter__()
        self._zip = zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True)
        return self

    def _close_member(self):
        if self._open is not None:
            member, expected = self._open
            if member.written != expected:
                raise PixelDiTError(f"{self.path}: a member got {member.written} of {expected} bytes")
            member.close()
            self._open = None

    def stream(self, name: str, shape, dtype):
        self._close_member()
        dtype = np.dtype(dtype)
        member = _CountingMember(self._zip.open(name + ".npy", "w", force_zip64=True))
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(int(s) for s in shape),
        }
        np.lib.format.write_array_header_2_0(member, header)
        member.written = 0
        self._open = (member, int(np.prod(shape)) * dtype.itemsize)
        return member

    def add(self, name: str, array) -> None:
        self._close_member()
        with self._zip.open(name + ".npy", "w", force_zip64=True) as m:
            np.lib.format.write_array(m, np.asarray(array), allow_pickle=False)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._close_member()
            self._zip.close()
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self._ctx.__exit__(exc_type, exc, tb)


class _CountingMember:
    """A zip member that counts payload bytes (the npy header is written before counting starts)."""

    def __init__(self, member):
        self.member, self.written = member, 0

    def write(self, data) -> int:
        data = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
        n = self.member.write(data)
        self.written += len(data)
        return n

    def close(self):
        self.member.close()
