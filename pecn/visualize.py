"""Side-by-side images for looking at predictions."""

import numpy as np


def comparison_grid(images) -> np.ndarray:
    """[input | ground truth | prediction] side by side at the first image's size, uint8 HWC."""
    size = images[0].size
    return np.concatenate([np.asarray(image.convert("RGB").resize(size)) for image in images], axis=1)
