"""MSN pretraining under TensorFlow's MirroredStrategy equals a single-device run.

Two virtual CPU devices stand in for two GPUs (TensorFlow must be told before it starts,
so the runs happen in a fresh process). The statistics MSN takes over the batch (me-max,
Sinkhorn, the head's BatchNorm), the anchor masks, the gradient clipping and the loss
Keras logs must all be those of the global batch, as the authors' all-reduce and
SyncBatchNorm make them.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import BACKEND

pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute strategies are TensorFlow's"
)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import keras_vitmsn as kv
    from keras_vitmsn import msn

    def views(n):
        rng = np.random.default_rng(0)
        return {"target": rng.normal(size=(n, 16, 16, 3)).astype("float32"),
                "anchor": rng.normal(size=(n, 16, 16, 3)).astype("float32"),
                "focal": rng.normal(size=(n, 2, 8, 8, 3)).astype("float32")}

    def run(strategy, images, epochs):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            encoder = kv.ViTMSNBackbone(image_shape=(16, 16, 3), patch_size=4, hidden_dim=16,
                                        num_layers=2, num_heads=2, intermediate_dim=32)
            pretrainer = msn.MSNPretrainer(encoder, mask_ratio=0.5, total_steps=3, seed=0,
                                           head_hidden_dim=32, head_output_dim=8,
                                           num_prototypes=10, use_sinkhorn=True,
                                           gradient_clip_norm=3.0)
            # "msn": the recipe's AdamW, clipped at the global norm.
            pretrainer.compile(None if sys.argv[1] == "msn" else keras.optimizers.SGD(1e-3))
        history = pretrainer.fit(views(images), batch_size=16, epochs=epochs, verbose=0,
                                 shuffle=False)
        # Parameters with an exactly zero gradient (key biases; fc1/fc2 biases and the
        # final LayerNorm beta, before a BatchNorm) get float-noise AdamW steps of up to
        # lr, which another reduction order changes: left out, with the online head's
        # BatchNorm moving means, which track those biases. The key biases are the
        # middle third of each fused qkv bias.
        zero = ("fc1/bias", "fc2/bias", "/layernorm/beta",
                "^projection_head/bn1/moving_mean", "^projection_head/bn2/moving_mean")
        weights = []
        for v in pretrainer.weights:
            value = np.asarray(v.numpy())
            if v.path.endswith("attention/qkv/bias"):
                query, _, values = np.split(value, 3)
                value = np.concatenate([query, values])
            if not ("^" + v.path).endswith(zero):
                weights.append((v.path, value))
        mirrored = type(pretrainer.encoder.weights[0].value).__name__
        return history.history, weights, mirrored

    images, epochs = int(sys.argv[2]), int(sys.argv[3])
    single, w_single, _ = run(tf.distribute.OneDeviceStrategy("/cpu:0"), images, epochs)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    multi, w_multi, mirrored = run(strategy, images, epochs)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "variable": mirrored,
        "single": single, "multi": multi,
        "weight_diffs": sorted(
            ((float(np.abs(a - b).max()), path)
             for (path, a), (_, b) in zip(w_single, w_multi)),
            reverse=True,
        )[:3],
    }))
    """
)


# 16 images: three steps of MSN's clipped AdamW on two slices of 8. 31 images: a step on
# 8 + 8, then the odd last batch of 15 on 8 + 7 (what tf.distribute gives a batch without
# drop_remainder). That one takes plain SGD: AdamW's first steps move every element by
# about lr whatever its gradient, so an element whose gradient is float noise moves by
# noise-sized differences of lr (3.8e-5 here), and the weights would no longer show
# whether the gradients agree; with SGD they do, to 2e-7.
@pytest.mark.parametrize(
    "optimizer, images, epochs, tolerance", [("msn", 16, 3, 1e-5), ("sgd", 31, 1, 1e-6)]
)
def test_mirrored_strategy_equals_single_device(tmp_path, optimizer, images, epochs, tolerance):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, optimizer, str(images), str(epochs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Really two replicas, each holding its own copy of every variable.
    assert result["replicas"] == 2
    assert result["variable"] == "MirroredVariable", result["variable"]
    single, multi = result["single"], result["multi"]
    # The logged loss and its parts are the global batch's, not a replica's.
    for part in ("loss", "ce", "me_max", "prototype_perplexity", "target_max"):
        np.testing.assert_allclose(multi[part], single[part], rtol=1e-5, err_msg=part)
    np.testing.assert_array_equal(multi["num_target_prototypes"], single["num_target_prototypes"])
    # The same weights after the steps (gradients summed over replicas, clipped at the
    # norm of the sum, BatchNorm and masks of the global batch, one EMA target).
    assert result["weight_diffs"][0][0] <= tolerance, result["weight_diffs"]
