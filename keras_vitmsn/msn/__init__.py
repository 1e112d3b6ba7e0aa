"""MSN (Masked Siamese Networks) pretraining building blocks: loss, masking, head.

- :func:`msn_loss`, :func:`sinkhorn`: the objective in ``keras.ops``.
- :func:`random_patch_keep_indices`: which patches a masked anchor view keeps (pass
  them to ``ViTMSNBackbone(..., patch_keep_indices=...)``).
- :class:`MSNProjectionHead`, :class:`MSNPrototypes`: the head and the prototypes,
  loadable from ``keras_vitmsn.load_msn_pretraining_state``.
- :class:`MSNPretrainer`: anchor + EMA target encoder, trained with ``compile()`` +
  ``fit()``; :func:`msn_optimizer` and the schedules are its default recipe.
- :class:`MSNAugmentation`, :func:`msn_multiview_dataset`: the multi-view tf.data
  pipeline (2 global + M focal crops) that feeds it.
- :func:`get_recipe`, :data:`MSN_RECIPES`: the released models' recipes by name;
  :func:`build_msn_training`: views, dataset, pretrainer and optimizer of a run.
- :func:`init_embeddings_like_msn`: the original's CLS / position-table start, which
  pretraining from scratch uses (fresh models otherwise start at zero, as transformers).
"""

from keras_vitmsn.models.optimizer import ScheduledAdamW
from keras_vitmsn.msn.augment import MSNAugmentation
from keras_vitmsn.msn.augment import msn_multiview_dataset
from keras_vitmsn.msn.augment import random_resized_crop_box
from keras_vitmsn.msn.head import MSNProjectionHead
from keras_vitmsn.msn.head import MSNPrototypes
from keras_vitmsn.msn.head import head_and_prototypes_from_state
from keras_vitmsn.msn.loss import l2_normalize
from keras_vitmsn.msn.loss import log_sinkhorn
from keras_vitmsn.msn.loss import msn_loss
from keras_vitmsn.msn.loss import sharpened_targets
from keras_vitmsn.msn.loss import sinkhorn
from keras_vitmsn.msn.masking import num_kept_patches
from keras_vitmsn.msn.masking import random_patch_keep_indices
from keras_vitmsn.msn.pretrainer import MSNPretrainer
from keras_vitmsn.msn.pretrainer import init_embeddings_like_msn
from keras_vitmsn.msn.pretrainer import msn_optimizer
from keras_vitmsn.msn.recipes import MSN_RECIPES
from keras_vitmsn.msn.recipes import get_recipe
from keras_vitmsn.msn.recipes import recipe_names
from keras_vitmsn.msn.schedules import ORIGINAL_IPE_SCALE
from keras_vitmsn.msn.schedules import CosineSchedule
from keras_vitmsn.msn.schedules import LinearSchedule
from keras_vitmsn.msn.schedules import WarmupCosineSchedule
from keras_vitmsn.msn.schedules import msn_learning_rate
from keras_vitmsn.msn.schedules import msn_weight_decay
from keras_vitmsn.msn.training import MSNTraining
from keras_vitmsn.msn.training import build_msn_training

__all__ = [
    "MSNProjectionHead",
    "MSNPrototypes",
    "head_and_prototypes_from_state",
    "l2_normalize",
    "log_sinkhorn",
    "msn_loss",
    "sharpened_targets",
    "sinkhorn",
    "num_kept_patches",
    "random_patch_keep_indices",
    "ScheduledAdamW",
    "MSNPretrainer",
    "init_embeddings_like_msn",
    "msn_optimizer",
    "MSN_RECIPES",
    "get_recipe",
    "recipe_names",
    "ORIGINAL_IPE_SCALE",
    "CosineSchedule",
    "LinearSchedule",
    "WarmupCosineSchedule",
    "msn_learning_rate",
    "msn_weight_decay",
    "MSNAugmentation",
    "msn_multiview_dataset",
    "random_resized_crop_box",
    "MSNTraining",
    "build_msn_training",
]
