"""Renders one picture per data-zoo condition into docs/images/zoo_<name>.png: the camera image
(contrast-stretched between its 0.5th and 99.8th percentiles) next to its labels in random colours.

    python docs/make_dataset_figures.py [--size 256] [--seed 0]
"""
from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cellulus_fast.datasets import CONDITIONS, zoo  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def label_colours(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB image of the labels: background black, each object a random bright colour."""
    rng = np.random.default_rng(seed)
    lut = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    lut[0] = 0.0
    return lut[labels]


def stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.8])
    return np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)


def render(name: str, size: int, seed: int, out_dir: str) -> str:
    data = zoo(name, num_images=1, size=size, seed=seed)
    image, labels = data.images[0], data.labels[0]
    # panels placed at exactly one screen pixel per image pixel: no resampling artefacts
    dpi, pad, top = 100, 8, 22
    h, w = image.shape
    fig = plt.figure(figsize=((2 * w + 3 * pad) / dpi, (h + pad + top) / dpi), dpi=dpi)
    fw, fh = 2 * w + 3 * pad, h + pad + top
    axes = [fig.add_axes([(pad + i * (w + pad)) / fw, pad / fh, w / fw, h / fh]) for i in range(2)]
    axes[0].imshow(stretch(image), cmap="gray", interpolation="nearest")
    axes[0].set_title(f"{name} (uint16, {image.min()}-{image.max()} ADU)", fontsize=8)
    axes[1].imshow(label_colours(labels, seed), interpolation="nearest")
    axes[1].set_title(f"labels: {labels.max()} objects, nominal d = {data.diameter:g} px", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    path = os.path.join(out_dir, f"zoo_{name}.png")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]  # RGB, no alpha channel: smaller files
    plt.close(fig)
    # a 256-colour palette keeps every picture well under 150 kB (noise does not compress)
    Image.fromarray(np.ascontiguousarray(rgb)).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "images"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in CONDITIONS:
        path = render(name, args.size, args.seed, args.out)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} kB")


if __name__ == "__main__":
    main()
