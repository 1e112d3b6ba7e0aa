"""Where the paper's evaluation transform resizes and crops: pure arithmetic.

Shared by :class:`keras_vitmsn.ViTMSNImageConverter` (``resize_mode="paper"``, on
tensors) and the image-folder reader (:mod:`keras_vitmsn.images.data`, on Pillow images), so
both crop exactly the same pixels.
"""

__all__ = ["PAPER_CROP_FRACTION", "paper_resize_geometry"]

# The paper's evaluation transform (logistic_eval.py): Resize(256) + CenterCrop(224).
PAPER_CROP_FRACTION = 224 / 256


def paper_resize_geometry(height, width, image_size):
    """``(resized_height, resized_width, top, left)`` of the paper's evaluation transform.

    torchvision's ``Resize(256)`` + ``CenterCrop(224)`` scaled with the model size: the
    image is resized, keeping its aspect, to cover ``round(s * 256 / 224)`` for each
    side ``s`` of ``image_size`` (for a square size: the shorter side becomes that, the
    longer ``int(R * long / short)``, as torchvision), then the centre ``image_size``
    is cropped (offsets ``int(round((resized - crop) / 2))``, as torchvision).

    Example:
    >>> paper_resize_geometry(300, 400, (224, 224))
    (256, 341, 16, 58)
    """
    crop_h, crop_w = image_size
    cover_h, cover_w = round(crop_h / PAPER_CROP_FRACTION), round(crop_w / PAPER_CROP_FRACTION)
    if width * cover_h >= cover_w * height:  # the height binds
        new_h, new_w = cover_h, int(cover_h * width / height)
    else:
        new_h, new_w = int(cover_w * height / width), cover_w
    return new_h, new_w, int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
