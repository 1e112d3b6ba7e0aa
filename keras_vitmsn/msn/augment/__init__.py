"""MSN's multi-view augmentation as a ``tf.data`` pipeline, usable under every backend.

Each image gives two global views (the unmasked ``"target"`` for the target encoder and
the masked ``"anchor"``) and ``M`` focal views (more anchors), each made as in the
authors' torchvision pipeline: RandomResizedCrop, horizontal flip, colour jitter
(p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5), then ImageNet normalisation.

- :mod:`~keras_vitmsn.msn.augment.recipe`: :class:`MSNAugmentation`, the views of
  one image.
- :mod:`~keras_vitmsn.msn.augment.ops`: the image operations (crop box, colour
  jitter, grayscale, blur).
- :mod:`~keras_vitmsn.msn.augment.dataset`: :func:`msn_multiview_dataset`, batches
  of views from a folder, an array or a ``tf.data.Dataset``.
- :mod:`~keras_vitmsn.msn.augment.batched` (internal): the same views rendered a
  batch at a time, for arrays of equally sized images.

Only TensorFlow ops with stateless randomness are used (and Pillow, for image
files TensorFlow does not decode), so the pipeline runs inside ``tf.data`` whatever
``KERAS_BACKEND`` is (Keras converts the batches for JAX and PyTorch), and a seed
fully determines the views. TensorFlow is imported when first needed, so importing
``keras_vitmsn`` does not require it.
"""

from keras_vitmsn.images.image_files import list_image_files
from keras_vitmsn.msn.augment.dataset import AUTOTUNE
from keras_vitmsn.msn.augment.dataset import msn_multiview_dataset
from keras_vitmsn.msn.augment.ops import LUMA_WEIGHTS
from keras_vitmsn.msn.augment.ops import color_jitter
from keras_vitmsn.msn.augment.ops import gaussian_blur
from keras_vitmsn.msn.augment.ops import grayscale
from keras_vitmsn.msn.augment.ops import random_resized_crop_box
from keras_vitmsn.msn.augment.recipe import MSNAugmentation

__all__ = [
    "AUTOTUNE",
    "LUMA_WEIGHTS",
    "MSNAugmentation",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "list_image_files",
    "msn_multiview_dataset",
    "random_resized_crop_box",
]
