"""Write 2048x1024 street frames with PNG sizes like Cityscapes', in the Cityscapes layout, for data benchmarks.

Usage:
    python benchmarks/make_street_frames.py OUT [--camvid ../shared/data/camvid] [--n 24] [--noise 0.45]

Real Cityscapes cannot be shipped, and what a worker spends on a frame depends on its PNG (about 60 % of
the time is decoding), so these frames are built to compress like the real ones: every 15th CamVid
training frame, upscaled (bicubic) from 480x360 to 2048x1024, with Gaussian sensor noise (sigma 0.45
by default) so that the PNGs (Pillow, compression level 6) average about 2.3 MB, the size of
Cityscapes' ``leftImg8bit`` frames. Labels are the CamVid annotations resized with nearest neighbour
and written as 8-bit greyscale ``*_gtFine_labelTrainIds.png`` (CamVid ids 0-10 stay, 11 becomes 255),
so ``CityscapesDataset(OUT, "train")`` loads them. The frames are for timing only: the classes are
CamVid's, not Cityscapes'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_frames(out: Path, camvid: Path, n: int = 24, noise: float = 0.45, stride: int = 15) -> list[Path]:
    """Write ``n`` image/label pairs under ``out`` (``leftImg8bit/train/<city>/``, ``gtFine/train/<city>/``)."""
    sources = sorted((camvid / "train").glob("*.jpg"))[::stride][:n]
    if len(sources) < n:
        raise SystemExit(f"{camvid}/train has only {len(sources)} frames at stride {stride}; lower --n")
    written = []
    for k, src in enumerate(sources):
        city = ("aachen", "bochum")[k % 2]
        stem = f"{city}_{k:06d}_000019"
        img_dir, gt_dir = out / "leftImg8bit" / "train" / city, out / "gtFine" / "train" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        bgr = cv2.resize(cv2.imread(str(src)), (2048, 1024), interpolation=cv2.INTER_CUBIC)
        grain = np.random.default_rng(k).normal(0, noise, bgr.shape).astype(np.float32)
        bgr = np.clip(bgr.astype(np.float32) + grain + 0.5, 0, 255).astype(np.uint8)
        image_path = img_dir / f"{stem}_leftImg8bit.png"
        Image.fromarray(bgr[:, :, ::-1]).save(image_path)
        label = np.array(Image.open(camvid / "trainannot" / f"{src.stem}.png"))
        label = cv2.resize(label, (2048, 1024), interpolation=cv2.INTER_NEAREST)
        label[label == 11] = 255
        Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")
        written.append(image_path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (Cityscapes layout)")
    parser.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    parser.add_argument("--n", type=int, default=24, help="frames (default 24)")
    parser.add_argument("--noise", type=float, default=0.45, help="sensor noise sigma (default 0.45: ~2.3 MB PNGs)")
    args = parser.parse_args()
    paths = write_frames(args.out, args.camvid, args.n, args.noise)
    sizes = [p.stat().st_size for p in paths]
    print(f"{len(paths)} frames in {args.out}: PNG {np.mean(sizes) / 1e6:.2f} MB on average "
          f"({min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f})")


if __name__ == "__main__":
    main()
