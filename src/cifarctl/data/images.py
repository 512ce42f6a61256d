"""One image to 8-bit RGB, whatever its mode: shared by dataset imports and ``predict``."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image, background: tuple[int, int, int] | None = None) -> Image.Image:
    """``img`` as 8-bit RGB. 16/32-bit grey is scaled to 8 bits (not clipped); CMYK, palette and grey
    are converted by PIL. With ``background``, transparency is composited onto that colour; without,
    the alpha channel is dropped."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.float64)
        scale = 65535 if mode.startswith("I;16") else (wide.max() or 1)
        img = Image.fromarray(np.round(wide / scale * 255).clip(0, 255).astype(np.uint8))
    elif background is not None and (mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info)):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")
