"""Read input scans of any common mode as uint8 RGB, with a guard against decompression bombs.

Real X-ray sets come as 8-bit pseudo-colour JPEGs (PIDray, SIXray), but detector exports are often
16-bit grey and web copies palette or RGBA PNGs; all of them become HxWx3 uint8 here.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from segloc.errors import UserError

# 64 MP: far above any baggage scan, far below what would exhaust memory on decode.
DEFAULT_MAX_PIXELS = 64_000_000


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """A lazily opened PIL image (header read, pixels not yet decoded), its size checked.

    Anything that goes wrong, on opening or inside the block (decoding), becomes a `UserError`
    naming the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width <= 0 or height <= 0 or width * height > max_pixels:
                    raise UserError(
                        f"{path}: {width}x{height} image is empty or exceeds the "
                        f"{max_pixels} pixel limit"
                    )
                yield img
    except UserError:
        raise
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such image file") from err
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise UserError(f"{path}: cannot decode image ({err})") from err


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone."""
    with open_image(path, max_pixels) as img:
        return img.size


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to an HxWx3 uint8 array; `UserError` naming the file when that fails."""
    with open_image(path, max_pixels) as img:
        img.load()
        return to_rgb(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth grey: keep the physical scale (0..65535 -> 0..255), don't stretch contrast.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "F" else max(float(arr.max()), 1e-12)
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        # Transparent pixels are air: composite over white (full transmission).
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
