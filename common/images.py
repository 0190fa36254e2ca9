"""Images of any mode as the 8-bit RGB the models see, the same for frames, panoramas and SSv2 pairs."""

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Transparent pixels become this colour (alpha composited over it), as on a plain page.
ALPHA_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: 16-bit scaled (not clipped), alpha composited over ALPHA_BACKGROUND."""
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255; scale 0..65535 to 0..255 instead.
        grey = np.asarray(image).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
