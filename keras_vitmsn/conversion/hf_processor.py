"""transformers' ``preprocessor_config.json`` as ViTMSNImageConverter arguments."""

from keras_vitmsn.utils import IMAGENET_MEAN
from keras_vitmsn.utils import IMAGENET_STD

# PIL resampling filters as stored in ``preprocessor_config.json`` (``resample``).
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic"}
_PROCESSOR_TYPES = ("ViTImageProcessor", "ViTImageProcessorFast", "ViTFeatureExtractor")
RELEASED_PROCESSOR = dict(
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
    rescale_factor=1.0 / 255.0,
)


def image_converter_kwargs_from_hf(preprocessor_config, model_config):
    """ViTMSNImageConverter kwargs from a ``preprocessor_config.json`` dict.

    With ``preprocessor_config=None`` (a checkpoint saved without one) the released
    ViT-MSN processor is used: resize to the model's ``image_size`` (bilinear),
    rescale by 1/255, ImageNet mean/std.

    Raises:
        ValueError: a processor type or option the converter cannot reproduce
            (center crop, shortest-edge resizing, an unknown resample filter).
    """
    image_size = model_config.get("image_size", 224)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if preprocessor_config is None:
        return dict(RELEASED_PROCESSOR, image_size=tuple(image_size))
    kind = preprocessor_config.get("image_processor_type") or preprocessor_config.get(
        "feature_extractor_type"
    )
    if kind not in _PROCESSOR_TYPES:
        raise ValueError(
            f"Unsupported image processor {kind!r} in preprocessor_config.json; "
            f"supported: {', '.join(_PROCESSOR_TYPES)}."
        )
    if preprocessor_config.get("do_center_crop"):
        raise ValueError(
            "preprocessor_config.json asks for a center crop, which "
            "ViTMSNImageConverter does not do (ViT-MSN's processor resizes only)."
        )
    kwargs = {}
    if preprocessor_config.get("do_resize", True):
        size = preprocessor_config.get("size", image_size)
        if isinstance(size, int):
            size = (size, size)
        elif isinstance(size, dict):
            if "height" not in size or "width" not in size:
                raise ValueError(
                    f"Unsupported resize size {size} in preprocessor_config.json: only "
                    "{'height': H, 'width': W} (or an int) is supported."
                )
            size = (size["height"], size["width"])
        kwargs["image_size"] = (int(size[0]), int(size[1]))
        resample = preprocessor_config.get("resample", 2)
        if resample not in _PIL_RESAMPLE:
            raise ValueError(
                f"Unsupported resample filter {resample!r} in preprocessor_config.json; "
                f"supported: {_PIL_RESAMPLE}."
            )
        kwargs["interpolation"] = _PIL_RESAMPLE[resample]
    else:
        kwargs["image_size"] = None
    if preprocessor_config.get("do_rescale", True):
        kwargs["rescale_factor"] = float(preprocessor_config.get("rescale_factor", 1.0 / 255.0))
    else:
        kwargs["rescale_factor"] = None
    if preprocessor_config.get("do_normalize", True):
        # Missing values take ViTImageProcessor's own defaults (0.5), not ImageNet's.
        kwargs["mean"] = tuple(preprocessor_config.get("image_mean", (0.5, 0.5, 0.5)))
        kwargs["std"] = tuple(preprocessor_config.get("image_std", (0.5, 0.5, 0.5)))
    else:
        kwargs["mean"] = kwargs["std"] = None
    return kwargs
