"""The offline demos behind ``keras-vitmsn demo`` and ``keras-vitmsn supervised-demo``.

- :mod:`keras_vitmsn.demos.msn_digits`: MSN pretraining on scikit-learn's digits
  without labels, then the paper's low-shot evaluation (``keras-vitmsn demo``).
- :mod:`keras_vitmsn.demos.supervised`: a one-minute supervised fit of a small ViT-MSN
  on a synthetic positional task (``keras-vitmsn supervised-demo``).

Both sit above the library (they import it; nothing in it imports them).
"""
