"""Image input: the image converter (the models' preprocessing) and image-folder readers.

- :mod:`~keras_vitmsn.images.converter`: :class:`ViTMSNImageConverter` and the
  paper's resize-and-crop geometry;
- :mod:`~keras_vitmsn.images.pixel_range`: what pixel values an image's dtype means;
- :mod:`~keras_vitmsn.images.image_files`: which files of a folder are images, checked
  once by Pillow, and how each is read at its own depth onto [0, 255] (shared by
  fine-tuning, low-shot, prediction and MSN pretraining);
- :mod:`~keras_vitmsn.images.folders`: labelled folders as arrays or a PyDataset.
"""

from keras_vitmsn.images.converter import RESIZE_MODES
from keras_vitmsn.images.converter import ViTMSNImageConverter
from keras_vitmsn.images.converter import paper_resize_geometry
from keras_vitmsn.images.folders import ImageFolder
from keras_vitmsn.images.folders import ImageFolderDataset
from keras_vitmsn.images.folders import load_image
from keras_vitmsn.images.folders import write_toy_image_folder
from keras_vitmsn.images.image_files import BadImageError
from keras_vitmsn.images.image_files import BadImageWarning
from keras_vitmsn.images.image_files import DepthError
from keras_vitmsn.images.image_files import decode_rgb
from keras_vitmsn.images.image_files import image_extensions
from keras_vitmsn.images.image_files import list_image_files
from keras_vitmsn.images.image_files import pixel_depth
from keras_vitmsn.images.image_files import read_class_folders
from keras_vitmsn.images.image_files import read_image_folder
from keras_vitmsn.images.image_files import read_pixels
from keras_vitmsn.images.image_files import scale_pixels

__all__ = [
    "RESIZE_MODES",
    "BadImageError",
    "BadImageWarning",
    "DepthError",
    "ImageFolder",
    "ImageFolderDataset",
    "ViTMSNImageConverter",
    "decode_rgb",
    "image_extensions",
    "list_image_files",
    "load_image",
    "paper_resize_geometry",
    "pixel_depth",
    "read_class_folders",
    "read_image_folder",
    "read_pixels",
    "scale_pixels",
    "write_toy_image_folder",
]
