"""Files in and out, in one place: verified atomic writes, hashing, the one image reader, PNG / grid / npz.

Every output of the toolkit goes through `atomic_file`: written to a hidden temporary name beside the
target, flushed, fsynced, size-checked, then renamed. A full disk, a read-only folder or a killed process
therefore never leaves a half-written file under a final name (which a resume would then trust), the
temporary file is removed on any error, and the error is one line that says what to do
(README, Reliability). `folders.remove_stale_temporaries` clears what a SIGKILL left behind.

Every input image goes through `read_image`: PNG (8 and 16 bit, gray, palette, alpha), JPEG, BMP and
WebP become uint8 RGB, and a note says what was converted.
"""

import contextlib
import errno
import hashlib
import io as _io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .errors import PixelDiTError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


#################################################################################
#                           Verified atomic writes                              #
#################################################################################


def write_error(path, e: OSError) -> PixelDiTError:
    """One line for a failed write, with the hint that fits the cause."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some space (or choose another --out) and re-run the same command: finished outputs are kept"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "the folder is not writable: choose another --out"
    elif e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        hint = "a file stands where a folder is needed (or the other way round): choose another --out"
    else:
        hint = "check the output folder and re-run"
    return PixelDiTError(f"could not write {path}: {why}", hint)


def temporary_name(path: Path) -> Path:
    """`.NAME.pixeldit-PID.tmp` beside `path`: a shape only pixeldit uses (folders.TEMPORARY), so cleanup
    never takes a user's own hidden files."""
    return path.with_name(f".{path.name}.pixeldit-{os.getpid()}.tmp")


class _RecordingFile:
    """A file that remembers the OSError a write raised: writers such as torch.save's zip writer catch it
    and raise their own error ("unexpected pos ...") instead, which would hide a full disk."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            n = self._f.write(data)
        except OSError as e:
            self.error = e
            raise
        want = memoryview(data).nbytes
        if n is not None and n < want and self.error is None:  # a short write: the file could not grow
            self.error = OSError(errno.ENOSPC, f"wrote {n} of {want} bytes (is the disk full?)")
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


def _discard(tmp: Path, path: Path, e: BaseException, recorded: OSError | None = None):
    """The one failure path of both atomic writers: remove the temporary, then say why in one line. A
    write error that a writer turned into its own error type (`recorded`) is reported as what it was."""
    with contextlib.suppress(OSError):  # on a read-only mount even unlinking a missing file fails (EROFS)
        tmp.unlink(missing_ok=True)
    cause = e if isinstance(e, OSError) else recorded
    if cause is not None:
        raise write_error(path, cause) from None
    raise e


@contextlib.contextmanager
def atomic_file(path, durable: bool = True):
    """Yield a binary file whose content appears at `path` only if everything was written and synced.

    Any OSError (no space, read-only, quota) becomes a PixelDiTError naming `path`; the temporary file is
    removed on every failure, including KeyboardInterrupt.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        f = open(tmp, "wb")
    except OSError as e:
        raise write_error(path, e) from None
    rec = _RecordingFile(f)
    try:
        with f:
            yield rec
            f.flush()
            if durable:
                os.fsync(f.fileno())
            if os.fstat(f.fileno()).st_size != f.tell():  # a short write that no call reported
                raise OSError(errno.EIO, f"wrote {f.tell()} bytes but the file holds {os.fstat(f.fileno()).st_size}")
        os.replace(tmp, path)
    except BaseException as e:
        _discard(tmp, path, e, rec.error)


@contextlib.contextmanager
def atomic_path(path, durable: bool = True, mode: int = 0o644):
    """Like atomic_file, for writers that take a path (safetensors' save_file): yields the temporary path.

    The file is synced, given `mode` (0644 whatever the umask of a temporary-file API), then renamed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        _discard(tmp, path, e)


def write_bytes(path, data: bytes, durable: bool = True) -> None:
    with atomic_file(path, durable) as f:
        f.write(data)


def write_text(path, text: str, durable: bool = True) -> None:
    write_bytes(path, text.encode(), durable)


def write_json(path, obj, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n", durable)


def append_line(path, line: str) -> None:
    """Append one line to a log (flushed); a failure is one line, not a traceback. A torn last line from a
    crash is dropped by the reader (see train.loop.trim_metrics)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as e:
        raise write_error(path, e) from None


def ensure_writable_dir(folder, what: str = "--out") -> Path:
    """Create `folder` (and parents) and prove it takes a file, before any expensive work starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PixelDiTError(f"{what} {folder} is a file, not a folder", f"choose another {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "write-probe")
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise write_error(folder, e) from None
    return folder


def ensure_writable_file(path, force: bool = False, what: str = "output") -> Path:
    """The target of a single-file output: refuse an existing file without --force, a folder, or an unwritable place."""
    path = Path(path)
    if path.is_dir():
        raise PixelDiTError(f"{what} {path} is a folder", "give a file name")
    if path.exists() and not force:
        raise PixelDiTError(f"{path} already exists", "pass --force to overwrite it")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), what=f"the folder of {path.name}")
    return path


#################################################################################
#                                   Hashing                                     #
#################################################################################


def file_sha256(path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted by name)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


#################################################################################
#                                 Reading images                                #
#################################################################################


def _to_rgb8(im) -> tuple[np.ndarray, str]:
    """A PIL image -> (H, W, 3) uint8 and a note on what was converted ('' when nothing was)."""
    mode = im.mode
    if mode.startswith("I"):  # 16-bit gray PNG ("I;16", or "I" on older Pillow): scale, never clip
        a = np.asarray(im).astype(np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2), "16-bit grayscale input converted to 8-bit RGB"
    if mode == "F":
        raise ValueError("32-bit float images are not supported")
    notes = {
        "1": "1-bit input converted to RGB",
        "L": "grayscale input converted to RGB",
        "LA": "grayscale+alpha input converted to RGB (alpha dropped)",
        "P": "palette input converted to RGB",
        "PA": "palette+alpha input converted to RGB (alpha dropped)",
        "RGBA": "RGBA input converted to RGB (alpha dropped)",
        "CMYK": "CMYK input converted to RGB",
        "YCbCr": "YCbCr input converted to RGB",
        "RGB": "",
    }
    if mode not in notes:
        raise ValueError(f"image mode {mode} is not supported")
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    if mode in ("LA", "PA", "RGBA"):  # drop alpha, keep the colour as stored (no compositing)
        im = im.convert("RGBA")
        return np.ascontiguousarray(np.asarray(im)[..., :3]), notes[mode]
    return np.ascontiguousarray(np.asarray(im.convert("RGB"))), notes[mode]


def read_image(path) -> tuple[torch.Tensor, str]:
    """Any accepted image -> (uint8 (3, H, W) RGB, note). One line for anything unreadable."""
    path = Path(path)
    if path.is_dir():
        raise PixelDiTError(f"{path} is a folder, not an image", "pass one image file")
    if not path.exists():
        raise PixelDiTError(f"image {path} does not exist", "check the path")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # > 89M pixels: refuse, not a warning block
            with Image.open(path) as im:
                im.load()
                rotated = im.getexif().get(0x0112, 1) not in (0, 1)  # phones store the rotation in EXIF
                arr, note = _to_rgb8(ImageOps.exif_transpose(im) if rotated else im)  # as a viewer shows it
                if rotated:
                    note = "; ".join(n for n in (note, "EXIF orientation applied") if n)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PixelDiTError(
            f"{path} claims to be a huge image (over {Image.MAX_IMAGE_PIXELS:,} pixels)",
            "pass a real image; pixeldit works at up to a few thousand pixels a side",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise PixelDiTError(
            f"{path} is not a readable image ({reason})",
            f"pass a {', '.join(x[1:].upper() for x in IMAGE_EXTENSIONS)} file",
        ) from None
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).contiguous(), note


def to_channels(img_u8: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """uint8 (C, H, W) -> (channels, H, W) and a note ('' when nothing changed).

    RGB -> gray is ITU-R 601 luma with Pillow's integer rounding (convert("L")), so a gray image stored as
    RGB comes back exactly; gray -> RGB replicates the channel (what Inception and ADM's npz expect)."""
    c = img_u8.shape[0]
    if c == channels:
        return img_u8, ""
    if c == 3 and channels == 1:
        r, g, b = img_u8.to(torch.int32).unbind(0)
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        gray = bool(torch.equal(img_u8[0], img_u8[1]) and torch.equal(img_u8[1], img_u8[2]))
        return luma.to(torch.uint8)[
            None
        ], "" if gray else "RGB converted to gray (ITU-R 601 luma) for a 1-channel model"
    if c == 1 and channels == 3:
        return img_u8.expand(3, -1, -1).contiguous(), ""
    raise PixelDiTError(f"cannot turn a {c}-channel image into {channels} channels", "models take 1 (gray) or 3 (RGB)")


def is_complete_png(path) -> bool:
    """A cheap check that a PNG was written whole: the signature and the IEND trailer are there."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() < 8 + 25 + 12:  # signature, IHDR, IEND at least
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12) == _PNG_IEND
    except OSError:
        return False


#################################################################################
#                                 Writing images                                #
#################################################################################


def png_bytes(img_u8: torch.Tensor) -> bytes:
    """uint8 (3, H, W) or (1, H, W) -> PNG bytes (Pillow, zlib level 6; torchvision is not imported here:
    `import torchvision` imports torch._dynamo, two seconds of start-up for every command)."""

    a = img_u8.detach().cpu().numpy()
    a = a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))
    buf = _io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_png(img_u8: torch.Tensor, path, durable: bool = True) -> None:
    """uint8 (3, H, W) or (1, H, W) -> PNG (RGB or gray), through a verified atomic write."""
    write_bytes(path, png_bytes(img_u8), durable)


def grid_image(images_u8: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """(N, C, H, W) uint8 -> one (C, H', W') image, `nrow` per row, white gaps (torchvision's make_grid layout)."""
    n, c, h, w = images_u8.shape
    nrow = max(1, min(nrow, n))
    rows = -(-n // nrow)
    grid = torch.full((c, padding + rows * (h + padding), padding + nrow * (w + padding)), pad_value, dtype=torch.uint8)
    for k, img in enumerate(images_u8.cpu()):
        y, x = padding + (k // nrow) * (h + padding), padding + (k % nrow) * (w + padding)
        grid[:, y : y + h, x : x + w] = img
    return grid


def write_grid(images_u8: torch.Tensor, path, nrow: int, column_labels=None, min_tile: int = 96) -> None:
    """A grid PNG: small images are upscaled (nearest, no smoothing) to at least `min_tile` pixels; with
    `column_labels` each column gets its label on a white strip above it."""
    images_u8 = _upscale(images_u8, min_tile)  # 32² thumbnails are too small to look at: nearest, no smoothing
    grid = grid_image(images_u8, nrow)
    if column_labels:
        grid = _label_columns(grid, images_u8.shape[-1], column_labels[:nrow])
    write_png(grid, path)


def upscale(images_u8: torch.Tensor, min_tile: int = 96) -> torch.Tensor:
    """Nearest-neighbour upscaling by the smallest integer factor that makes the larger side >= min_tile."""
    return _upscale(images_u8, min_tile)


def _upscale(images_u8: torch.Tensor, min_tile: int) -> torch.Tensor:
    k = max(1, -(-min_tile // max(images_u8.shape[-2:])))
    return images_u8.repeat_interleave(k, -2).repeat_interleave(k, -1) if k > 1 else images_u8


def _label_columns(grid: torch.Tensor, tile: int, labels, padding: int = 2, strip: int = 14) -> torch.Tensor:
    """Add a white strip above the grid with each column's label, cut to the column's width."""
    c, h, w = grid.shape
    canvas = Image.new("RGB" if c == 3 else "L", (w, h + strip), "white")
    pixels = grid[0].numpy() if c == 1 else np.ascontiguousarray(grid.permute(1, 2, 0).numpy())
    canvas.paste(Image.fromarray(pixels), (0, strip))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i, label in enumerate(labels):
        text = str(label)
        while text and draw.textlength(text, font=font) > tile:
            text = text[:-1]
        x = padding + i * (tile + padding) + (tile - draw.textlength(text, font=font)) / 2
        draw.text((x, 1), text, fill="black", font=font)
    a = np.array(canvas)
    return torch.from_numpy(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1).contiguous()


#################################################################################
#                      Files named by other files (indexes, configs)            #
#################################################################################


def json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object: anything else is one line naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PixelDiTError(f"{path} is not valid JSON ({str(e).splitlines()[0][:80]})", f"is this {what}?") from None
    except OSError as e:
        raise PixelDiTError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(value, dict):
        raise PixelDiTError(f"{path} holds a JSON {type(value).__name__}, not an object", f"is this {what}?")
    return value


def inside(folder: Path, name, source: Path) -> Path:
    """`folder/name` for a name read from a file in `folder`, refusing anything that leaves the folder
    (`../x`, an absolute path, a symlink pointing out): a crafted index must not make us read elsewhere."""
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise PixelDiTError(
            f"{source} names {name!r}, which is not a file inside {folder}",
            "a shard must be a plain file name in the same folder",
        )
    path = folder / name
    real_folder = folder.resolve()
    if path.exists() and path.resolve().parent != real_folder:
        raise PixelDiTError(
            f"{source} names {name!r}, a link to a file outside {folder}", "copy the shard into the folder"
        )
    return path
