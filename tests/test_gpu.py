"""GPU-only checks: the fused attention path really uses a flash kernel, and bf16 runs.

Skipped on machines without a GPU (CI never has one). On a GPU host run the suite
under KERAS_BACKEND=jax and torch (see benchmarks/gpu_session.sh).
"""

import keras
import numpy as np
import pytest

import keras_vitmsn as kv

BACKEND = keras.backend.backend()


def gpu_available():
    if BACKEND == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if BACKEND == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


pytestmark = pytest.mark.skipif(not gpu_available(), reason="needs a GPU")

BASE_4 = dict(patch_size=4, hidden_dim=768, num_layers=1, num_heads=12, intermediate_dim=3072)


def test_flash_attention_kernel_is_used_for_long_sequences():
    """vit_msn_base_4 has 3137 tokens: the explicit path would materialise 12 x 3137^2
    scores per image; the fused path must dispatch to a flash kernel."""
    backbone = kv.ViTMSNBackbone(**BASE_4, dtype="bfloat16")
    images = keras.ops.convert_to_tensor(np.random.rand(2, 224, 224, 3).astype("float32"))
    if BACKEND == "torch":
        import torch
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile

        with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            backbone(images)
        names = " ".join(e.key for e in prof.key_averages()).lower()
        assert "flash" in names or "efficient_attention" in names or "cudnn" in names, names[:2000]
    elif BACKEND == "jax":
        import jax

        trainable = [v.value for v in backbone.trainable_variables]
        non_trainable = [v.value for v in backbone.non_trainable_variables]

        def forward(tv, ntv, x):
            return backbone.stateless_call(tv, ntv, x)[0]["last_hidden_state"]

        hlo = jax.jit(forward).lower(trainable, non_trainable, images).compile().as_text()
        assert "cudnn" in hlo.lower() and "fmha" in hlo.lower(), (
            "no cuDNN flash attention in the HLO"
        )
    else:
        pytest.skip("TensorFlow has no fused attention kernel in keras.ops")


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_training_step_on_gpu(policy):
    backbone = kv.ViTMSNBackbone(**dict(BASE_4, patch_size=16), dtype=policy)
    clf = kv.ViTMSNClassifier(backbone, num_classes=10)
    images = np.random.rand(8, 224, 224, 3).astype("float32")
    loss = clf.train_on_batch(images, np.arange(8) % 10)
    assert np.isfinite(loss)
