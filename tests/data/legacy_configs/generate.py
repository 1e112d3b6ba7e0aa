"""Writes the files in this folder with keras-vitmsn 0.x as it was before `image_shape`
followed `data_format` and before tasks held a keras-hub style preprocessor; the
tests check that the current code loads them with identical outputs.

Kept for the record (the files must stay as that version wrote them):
``python tests/data/legacy_configs/generate.py``.
"""

import os


def main():
    import keras
    import numpy as np

    import keras_vitmsn as kv

    here = os.path.dirname(os.path.abspath(__file__))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 32, 16), dtype="uint8")  # channels first
    expected = {"images_channels_first": images}
    for data_format in ("channels_first", "channels_last"):
        backbone = kv.ViTMSNBackbone(
            image_shape=(32, 16, 3),  # (H, W, C) whatever data_format, as then
            patch_size=8,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
            data_format=data_format,
        )
        for v in backbone.weights:
            v.assign(rng.normal(0.0, 0.2, v.shape).astype("float32"))
        converter = kv.ViTMSNImageConverter(image_size=(32, 16), data_format=data_format)
        clf = kv.ViTMSNClassifier(backbone, num_classes=3, preprocessor=converter)
        x = images if data_format == "channels_first" else np.transpose(images, (0, 2, 3, 1))
        # .keras files are ignored by git: stored under another suffix.
        keras_path = os.path.join(here, f"classifier_{data_format}.keras")
        clf.save(keras_path)
        os.replace(keras_path, keras_path + "_legacy")
        clf.save_to_preset(os.path.join(here, f"classifier_{data_format}_preset"))
        expected[f"logits_{data_format}"] = keras.ops.convert_to_numpy(clf.predict(x, verbose=0))
        features = backbone(converter(x))["last_hidden_state"]
        expected[f"features_{data_format}"] = keras.ops.convert_to_numpy(features)
    np.savez(os.path.join(here, "expected.npz"), **expected)


if __name__ == "__main__":
    main()
