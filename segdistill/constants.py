"""Constants every stage shares, in one place."""

from __future__ import annotations

#: The label value that no loss or metric counts (mmseg's ``ignore_index``; Cityscapes' void).
IGNORE_INDEX = 255

#: The input normalisation of every model in the zoo (mmseg's ``SegDataPreProcessor``): RGB on the
#: 0-255 scale, ImageNet statistics. A network's input is ``(pixel - MEAN_RGB) / STD_RGB``.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
