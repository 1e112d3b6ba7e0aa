"""MSN (Masked Siamese Networks) pretraining building blocks: loss, masking, head.

- :func:`msn_loss`, :func:`sinkhorn`: the objective in ``keras.ops``.
- :func:`random_patch_keep_indices`: which patches a masked anchor view keeps (pass
  them to ``ViTMSNBackbone(..., patch_keep_indices=...)``).
- :class:`MSNProjectionHead`, :class:`MSNPrototypes`: the head and the prototypes,
  loadable from ``keras_vitmsn.load_msn_pretraining_state``.
"""

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
