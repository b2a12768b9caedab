"""Image folders written by the tests (`<data dir>/folders/NAME`, ImageFolder layout): a few classes of images of
mixed sizes and modes whose colour says the class (so a tiny model can learn them), plus the broken files a
researcher's folder really holds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def _image(rng, colour, size, mode) -> Image.Image:
    base = np.clip(np.array(colour) + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(base, "RGB")
    return im.convert(mode) if mode != "P" else im.quantize(16)


def write_folder(data_dir: Path, name: str = "shapes", train: int = 12, val: int = 6, classes=tuple(COLOURS),
                 broken: bool = True, seed: int = 0) -> Path:
    """`<data_dir>/folders/<name>` with `train` and `val` images per class, sizes 20..300 px and modes L, RGB,
    RGBA, P and CMYK (PNG and JPEG); with `broken`, a truncated PNG, a text file named .jpg and a README."""
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / "folders" / name
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                mode = MODES[i % len(MODES)]
                size = (int(rng.integers(20, 300)), int(rng.integers(20, 300)))
                im = _image(rng, COLOURS.get(c, (128, 128, 128)), size, mode)
                if mode in ("RGBA", "P"):
                    im.save(d / f"{i:03d}.png")
                else:
                    im.save(d / f"{i:03d}.jpg", quality=90)
    if broken:
        good = root / "train" / classes[0] / "000.jpg"
        png = root / "train" / classes[0] / "broken.png"
        _image(rng, (1, 2, 3), (64, 64), "RGB").save(png)
        png.write_bytes(png.read_bytes()[:200])  # truncated
        (root / "val" / classes[1] / "notes.jpg").write_text("not an image")
        (root / "train" / "README.txt").write_text("a stray file beside the class folders")
        assert good.is_file()
    return root
