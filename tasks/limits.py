"""Bounds on what one image file may cost before its pixels are decoded: only regular files are opened (a FIFO
would block the reader forever), a file-size cap checked from `stat`, and a pixel budget checked from the
image's header. A file over a bound is refused with an ImageLoadError naming the bound and the parameter that
raises it, so it becomes that image's `failures` row instead of taking its shard (or the machine) down.

Light on purpose (standard library only): the explorer and the CLI use it too.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

MB = 1024 * 1024
CHUNK = 1 << 20  # bytes read at a time when hashing a file


class ImageLoadError(ValueError):
    """An image that cannot be used: recorded as a per-image failure, never a lost row."""


class NotARegularFile(ImageLoadError):
    """A FIFO, socket, device or folder where an image file was expected: refused without opening it."""


class FileTooLarge(ImageLoadError):
    """A file over the file-size cap (`max_file_mb`)."""


class TooManyPixels(ImageLoadError):
    """An image whose header declares more pixels than the budget (`max_pixels`): a decompression bomb, or a
    photo too large to decode here."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost: pixels declared in its header, bytes of its file."""
    max_pixels: int = 64_000_000
    max_file_mb: float = 256.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    def check_pixels(self, width: int, height: int, name: str) -> None:
        """TooManyPixels when a header's width × height is over the budget (before any pixel is decoded)."""
        if width * height > self.max_pixels:
            raise TooManyPixels(f"{name} declares {width}x{height} = {width * height / 1e6:.1f} MP, over the pixel "
                                f"budget of {self.max_pixels / 1e6:g} MP (max_pixels, --max-pixels raises it)")

    def check_size(self, n_bytes: int, name: str) -> None:
        if n_bytes > self.max_bytes:
            raise FileTooLarge(f"{name} is {n_bytes:,} bytes, over the file-size cap of {self.max_file_mb:g} MB "
                               f"(max_file_mb, --max-file-mb raises it)")


DEFAULT_LIMITS = DecodeLimits()

KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((what for test, what in KINDS if test(mode)), "not a regular file")


def check_file(path: str, limits: DecodeLimits = DEFAULT_LIMITS) -> os.stat_result:
    """The file's stat (symlinks followed) when it is a regular file within the size cap; else ImageLoadError.
    Nothing is opened."""
    try:
        st = os.stat(path)
    except OSError as e:  # missing, a symlink loop, no permission
        raise ImageLoadError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:  # a NUL byte in the name
        raise ImageLoadError(f"cannot read {path!r}: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(f"{path} is {kind_of(st.st_mode)}, not a regular file; only regular image files are "
                              f"read (remove it from the dataset)")
    limits.check_size(st.st_size, path)
    return st


def _open_regular(path: str, limits: DecodeLimits) -> int:
    """A read-only descriptor of a regular file within the cap, checked before opening and again on the open file
    (it may have been swapped for a FIFO in between: non-blocking open, so even then nothing hangs)."""
    check_file(path, limits)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ImageLoadError(f"cannot read {path}: {e.strerror or e}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotARegularFile(f"{path} is {kind_of(st.st_mode)}, not a regular file; only regular image files are "
                              f"read (remove it from the dataset)")
    return fd


def read_file(path: str, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of a regular image file within the size cap (a file that grew past it meanwhile is refused)."""
    fd = _open_regular(path, limits)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limits.max_bytes + 1)
    except OSError as e:
        raise ImageLoadError(f"cannot read {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    limits.check_size(len(data), path)
    return data


def hash_file(path: str, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    """The content id (first 16 hex digits of the SHA-256 of the bytes, as data.image_id_of) of a regular file
    within the size cap, read in chunks: no file is ever held whole to be hashed."""
    fd = _open_regular(path, limits)
    h, n = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            while chunk := f.read(CHUNK):
                n += len(chunk)
                limits.check_size(n, path)
                h.update(chunk)
    except OSError as e:
        raise ImageLoadError(f"cannot read {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    return h.hexdigest()[:16]
