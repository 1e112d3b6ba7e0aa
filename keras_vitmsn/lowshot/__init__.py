"""Low-shot evaluation as in the MSN paper: logistic regression on frozen features.

The protocol of Assran et al. (2022), "Masked Siamese Networks for Label-Efficient
Learning", section "Low-shot evaluation", as run by the authors' ``logistic_eval.py``
(facebookresearch/msn):

1. Freeze the (target) encoder and take, for every image, the CLS token of the last
   transformer block **before** the final LayerNorm (``feature="cls_pre_norm"``, the
   default; ``feature="cls"`` takes it after the LayerNorm). Resizing, cropping and
   ImageNet mean/std are the input pipeline's job. See :mod:`.features`.
2. Pre-process every feature vector on its own: subtract the mean of its coordinates
   and scale it to unit L2 norm, as the authors' ``cyanure.preprocess`` call does, for
   the training and the test features separately (:func:`preprocess_features`).
3. Fit a multinomial logistic regression with an L2 penalty and no intercept, the
   objective cyanure minimises; ``l2_penalty`` means the script's ``--lambd`` and
   defaults to the README's ``0.0025`` (:data:`DEFAULT_L2_PENALTY`). It is solved in
   NumPy (float64) with L-BFGS, to a tighter tolerance than cyanure's, so accuracies
   can differ from the original script's in the last decimals. See :mod:`.solver`.
4. Report top-1 accuracy on the test set, for 1, 2 and 5 labelled images per class
   (3 splits each) and for 1% of the labels; we report mean and sample standard
   deviation over the splits. :mod:`.sampling` draws the labelled subsets,
   :mod:`.protocol` runs the whole evaluation (:func:`evaluate` on features,
   :func:`lowshot_eval` from images) and prints it (:func:`format_table`).

Nothing here needs scikit-learn or SciPy.

Example:
>>> import numpy as np
>>> import keras_vitmsn as kv
>>> backbone = kv.ViTMSNBackbone(image_shape=(32, 32, 3), patch_size=8, hidden_dim=32,
...                              num_layers=2, num_heads=4, intermediate_dim=64)
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat(np.arange(3), 4)
>>> images = rng.normal(size=(12, 32, 32, 3)).astype("float32") + labels[:, None, None, None]
>>> results = kv.lowshot.lowshot_eval(backbone, images, images, train_labels=labels,
...                                   test_labels=labels, shots=(1, 2), num_splits=2,
...                                   verbose=0)
>>> sorted(results)
[1, 2]
>>> print(kv.lowshot.format_table(results).splitlines()[0].split())
['shots', 'splits', 'train', 'images', 'top-1', '(%)']
"""

from keras_vitmsn.lowshot.features import CENTERINGS
from keras_vitmsn.lowshot.features import FEATURES
from keras_vitmsn.lowshot.features import extract_features
from keras_vitmsn.lowshot.features import preprocess_features
from keras_vitmsn.lowshot.protocol import ShotResult
from keras_vitmsn.lowshot.protocol import evaluate
from keras_vitmsn.lowshot.protocol import format_table
from keras_vitmsn.lowshot.protocol import lowshot_eval
from keras_vitmsn.lowshot.sampling import sample_per_class
from keras_vitmsn.lowshot.solver import DEFAULT_L2_PENALTY
from keras_vitmsn.lowshot.solver import LogisticRegression
from keras_vitmsn.lowshot.solver import LowShotConvergenceWarning

__all__ = [
    "DEFAULT_L2_PENALTY",
    "FEATURES",
    "CENTERINGS",
    "LogisticRegression",
    "ShotResult",
    "LowShotConvergenceWarning",
    "extract_features",
    "preprocess_features",
    "sample_per_class",
    "evaluate",
    "lowshot_eval",
    "format_table",
]
