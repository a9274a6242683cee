"""The PIL reader behind :func:`pipeline.io.sources.open_source`: PNG, JPEG, BMP, WebP, loaded
whole (up to ``SourceSpec.max_pixels_in_memory``); an alpha channel becomes the validity mask.
The mode rules are documented in :mod:`pipeline.io.sources`."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import InputNotFoundError, UnsupportedInputError
from pipeline.io.sources import Source, SourceSpec

__all__ = ["NotPilImage", "PilSource", "open_pil", "pil_to_array", "png_is_16bit_colour"]

# PIL's own decompression-bomb limit is a module global; it is lifted (under this lock) while
# an image is opened, and max_pixels_in_memory is enforced instead.
_PIL_LOCK = threading.Lock()


class NotPilImage(UnsupportedInputError):
    """PIL does not recognise the file; the dispatcher may try another backend."""


class PilSource(Source):
    backend = "pil"

    def __init__(self, spec: SourceSpec, data: np.ndarray, interps: Sequence[str],
                 alpha: np.ndarray | None = None) -> None:
        super().__init__(spec, data.shape, data.dtype)
        data = data.astype(self.dtype, copy=False)  # native byte order (PIL I;16B is big-endian)
        self._data: np.ndarray | None = data if self.all_bands else data[list(self.bands)]
        self.band_info = [{"colorinterp": interps[b], "description": None} for b in self.bands]
        self._valid: np.ndarray | None = None if alpha is None or alpha.all() else alpha != 0
        if self._valid is not None:
            self.mask_nodata = 0.0 if self.dtype.kind != "f" else float("nan")

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        assert self._data is not None
        return self._data[:, r0:r1, c0:c1].copy()

    def _read_valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        assert self._valid is not None
        return self._valid[r0:r1, c0:c1].copy()

    def _close(self) -> None:
        self._data = None
        self._valid = None


def pil_to_array(image: Any, uri: str) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """``(C, H, W)`` array of a loaded PIL image, following the mode rules above, the colour
    interpretation of each band (``gray`` for one band, ``red, green, blue`` for RGB) and the
    alpha channel ``(H, W)`` (None without one)."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        mode = "PA"  # a palette with a transparent index: keep it as alpha
    if mode == "1":
        image, mode = image.convert("L"), "L"
    elif mode in ("P", "PA"):
        image, mode = image.convert("RGBA"), "RGBA"
    elif mode in ("CMYK", "YCbCr"):
        image, mode = image.convert("RGB"), "RGB"
    alpha = None
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        data = np.asarray(image)[None]
    elif mode in ("RGB", "RGBA"):
        pixels = np.asarray(image)
        data = pixels[:, :, :3].transpose(2, 0, 1)
        alpha = pixels[:, :, 3] if mode == "RGBA" else None
    elif mode == "LA":
        pixels = np.asarray(image)
        data, alpha = pixels[None, :, :, 0], pixels[:, :, 1]
    else:
        raise UnsupportedInputError(
            f"{uri!r} has PIL mode {mode!r}; supported: L, I;16, I, F, RGB, RGBA, LA, P, PA, 1, "
            "CMYK, YCbCr"
        )
    interps = ["gray"] if data.shape[0] == 1 else ["red", "green", "blue"]
    return (np.ascontiguousarray(data), interps,
            None if alpha is None else np.ascontiguousarray(alpha))


def open_pil(spec: SourceSpec, path: str, fs: Any | None) -> Source:
    from PIL import Image, UnidentifiedImageError

    with _PIL_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with fs.open(path, "rb") if fs is not None else open(path, "rb") as fh:
                with Image.open(fh) as image:
                    width, height = image.size
                    if width * height > spec.max_pixels_in_memory:
                        raise UnsupportedInputError(
                            f"{spec.uri!r} is {width}x{height} = {width * height} pixels, above "
                            f"max_pixels_in_memory={spec.max_pixels_in_memory}; PIL loads whole "
                            "images, so convert it to a tiled GeoTIFF or zarr"
                        )
                    image.load()
                    data, interps, alpha = pil_to_array(image, spec.uri)
        except UnidentifiedImageError as exc:
            raise NotPilImage(f"{spec.uri!r} is not an image PIL can identify: {exc}") from exc
        except (Image.DecompressionBombError, SyntaxError) as exc:
            raise UnsupportedInputError(f"{spec.uri!r} is not a readable image: {exc}") from exc
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise InputNotFoundError(f"input not found: {spec.uri!r}") from exc
            raise UnsupportedInputError(f"{spec.uri!r} is not a readable image: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return PilSource(spec, data, interps, alpha)


def png_is_16bit_colour(path: str, fs: Any | None) -> bool:
    """True for a PNG whose IHDR says bit depth 16 with colour or alpha (PIL truncates these)."""
    try:
        with fs.open(path, "rb") if fs is not None else open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return False
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 4, 6)
