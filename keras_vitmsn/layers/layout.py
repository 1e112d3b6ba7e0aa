"""Image layout: where height and width sit in a shape for each ``data_format``."""


def spatial_shape(shape, data_format):
    """``(height, width)`` of an image or batch shape in ``data_format`` layout.

    Reads the last three dimensions, so a single image and a batch both work.

    Example:
    >>> spatial_shape((8, 224, 160, 3), "channels_last")
    (224, 160)
    >>> spatial_shape((8, 3, 224, 160), "channels_first")
    (224, 160)
    """
    if data_format == "channels_first":
        return tuple(shape[-2:])
    return tuple(shape[-3:-1])
