"""Writes the three Kaggle-ready notebooks of this folder (run it after editing them here).

Every notebook opens with a cell tagged ``parameters`` (papermill's convention): the
test suite replaces it to run the notebook end to end on a tiny preset (served as a
kaggle:// handle from a local kagglehub cache, or as a local folder) and a generated
image folder, under the backend being tested.

The model comes the Kaggle way first: ``KAGGLE_PRESET``, a kaggle:// handle of a model
attached to the notebook (kagglehub reads the attached copy), when set; else
``HF_PRESET`` (a built-in name, fetched from Hugging Face).

    python notebooks/build_notebooks.py
"""

import os

import nbformat
from nbformat.v4 import new_code_cell
from nbformat.v4 import new_markdown_cell
from nbformat.v4 import new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

PARAMETERS = """# Parameters (papermill / CI override this cell).
# Your model on Kaggle Models, attached to this notebook (Add Input -> Models), e.g.
# "kaggle://me/vit-msn/keras/vit_msn_small/1" (uploaded with kv.upload_preset); empty
# to use HF_PRESET.
KAGGLE_PRESET = ""
HF_PRESET = "vit_msn_small"  # a preset name, "hf://org/repo", or a local preset directory
BACKEND = "jax"            # "jax", "torch" or "tensorflow"
IMAGE_DIR = None           # a folder with one sub-folder per class; None generates a toy one
INSTALL = True             # pip-install keras-vitmsn (turn off when it is installed)
"""

SETUP = """import os, subprocess, sys

# The backend must be chosen before keras is imported anywhere in the kernel.
os.environ["KERAS_BACKEND"] = BACKEND
# The Kaggle way first: the attached model (no download), else Hugging Face.
PRESET = KAGGLE_PRESET or HF_PRESET
if INSTALL:
    package = "keras-vitmsn[kaggle]" if PRESET.startswith("kaggle://") else "keras-vitmsn"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)

import keras
import numpy as np
import keras_vitmsn as kv


def detect_gpu():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return [d for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    import tensorflow as tf
    return tf.config.list_physical_devices("GPU")


print("Keras", keras.__version__, "| backend", keras.backend.backend(),
      "| GPU:", detect_gpu() or "none")
print("preset:", PRESET)
"""

DATA = """from keras_vitmsn.images.folders import ImageFolder, write_toy_image_folder

if IMAGE_DIR is None:  # a small generated data set, so the notebook runs anywhere
    IMAGE_DIR = write_toy_image_folder("toy_images", num_classes=3, per_class=12, size=96)
folder = ImageFolder(IMAGE_DIR)
print(len(folder), "images,", folder.class_counts())
"""


def notebook(title, intro, cells):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell(f"# {title}\n\n{intro}"), params, new_code_cell(SETUP)]
    for kind, source in cells:
        nb.cells.append(new_markdown_cell(source) if kind == "md" else new_code_cell(source))
    # Fixed ids (nbformat draws random ones): rebuilding changes only what was edited.
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:02d}"
    return nb


QUICKSTART = notebook(
    "ViT-MSN quickstart",
    "Load a released MSN backbone, classify images from one labelled example per class, "
    "look at where the CLS token attends, and run the same model on another backend.",
    [
        ("code", DATA),
        (
            "md",
            "## Load a preset\n\nA `kaggle://` preset attached to the notebook is read "
            "where Kaggle mounted it. From Hugging Face, `from_preset` downloads and "
            "converts the transformers checkpoint once, then loads from the Keras cache. "
            "The image converter resizes to 224x224 and normalises like the released "
            "processor.",
        ),
        (
            "code",
            """backbone = kv.ViTMSNBackbone.from_preset(PRESET)
converter = kv.ViTMSNImageConverter.from_preset(PRESET)
size = backbone.image_shape[:2]
images = folder.load(size)          # uint8, (n, height, width, 3)
inputs = converter(images)
print(backbone.count_params(), "parameters; inputs", tuple(inputs.shape))
""",
        ),
        (
            "md",
            "## Classify with one labelled image per class\n\nThe released checkpoints have "
            "no classification head: MSN features are made for label-efficient use. Take "
            "the first image of each class as its prototype and label every other image by "
            "the most similar prototype (cosine similarity of CLS features).",
        ),
        (
            "code",
            """out = backbone.predict(inputs, batch_size=16, verbose=0)
features = out["last_hidden_state"][:, 0]
features = features / np.linalg.norm(features, axis=1, keepdims=True)
labels = folder.labels
first_of_class = [np.flatnonzero(labels == c)[0] for c in range(len(folder.class_names))]
prototypes = features[first_of_class]
predicted = (features @ prototypes.T).argmax(1)
print(f"1-shot nearest-prototype accuracy: {(predicted == labels).mean():.2%}")
""",
        ),
        (
            "md",
            "## Where does the CLS token look?\n\nThe attention of the CLS token to every "
            "patch in the last layer, averaged over heads, drawn over the image.",
        ),
        (
            "code",
            """import matplotlib
import matplotlib.pyplot as plt

out = backbone(inputs[:4], output_attentions=True)
attn = keras.ops.convert_to_numpy(out["attentions"][-1])   # (4, heads, tokens, tokens)
grid = backbone.grid_size
cls_to_patches = attn[:, :, 0, 1:].mean(axis=1).reshape(-1, *grid)
fig, axes = plt.subplots(1, len(cls_to_patches), figsize=(3 * len(cls_to_patches), 3))
for ax, image, heat in zip(np.atleast_1d(axes), images[:4], cls_to_patches):
    ax.imshow(image)
    ax.imshow(heat, cmap="inferno", alpha=0.5, extent=(0, image.shape[1], image.shape[0], 0))
    ax.axis("off")
fig.savefig("cls_attention.png", bbox_inches="tight")
plt.show()
""",
        ),
        (
            "md",
            "## Switch backend\n\nKeras fixes its backend once per process, so restart the "
            "kernel with another `BACKEND` to switch. The cell below runs the same preset "
            "under every other installed backend in a fresh process and compares the CLS "
            "features with this one's.",
        ),
        (
            "code",
            '''import json, tempfile

np.save("inputs.npy", keras.ops.convert_to_numpy(inputs[:2]))
ours = backbone.predict(np.load("inputs.npy"), verbose=0)["last_hidden_state"][:, 0]
script = f"""
import json, numpy as np, keras_vitmsn as kv
backbone = kv.ViTMSNBackbone.from_preset({PRESET!r})
out = backbone.predict(np.load("inputs.npy"), verbose=0)
print(json.dumps(out["last_hidden_state"][:, 0].tolist()))
"""
for other in ["jax", "torch", "tensorflow"]:
    if other == keras.backend.backend():
        continue
    env = dict(os.environ, KERAS_BACKEND=other)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"{other}: not available here ({run.stderr.strip().splitlines()[-1][:100]})")
        continue
    theirs = np.array(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"{other}: max abs difference of CLS features {np.abs(theirs - ours).max():.2e}")
''',
        ),
    ],
)

FINETUNE = notebook(
    "Fine-tune ViT-MSN with a tf.data pipeline",
    "Build a `tf.data` pipeline from an image folder, fine-tune a classifier from a preset "
    "(any backend: tf.data only feeds the data), evaluate, plot the curves and save.",
    [
        ("code", DATA),
        (
            "code",
            """import tensorflow as tf

EPOCHS = 3
BATCH_SIZE = 8
clf = kv.ViTMSNClassifier.from_preset(PRESET, num_classes=len(folder.class_names))
size = clf.backbone.image_shape[:2]
# The classifier carries the preset's image converter (resize, rescale, normalise), so
# the pipeline only decodes and batches uint8 images.
train_ds, val_ds = keras.utils.image_dataset_from_directory(
    IMAGE_DIR, image_size=size, batch_size=BATCH_SIZE, validation_split=0.25,
    subset="both", seed=0, label_mode="int",
)
train_ds = train_ds.cache().prefetch(tf.data.AUTOTUNE)
val_ds = val_ds.cache().prefetch(tf.data.AUTOTUNE)
""",
        ),
        (
            "md",
            "Full fine-tuning with AdamW. For a linear probe instead, freeze the backbone "
            "(`clf.backbone.trainable = False`) and raise the learning rate to ~1e-3.",
        ),
        (
            "code",
            """clf.compile(
    optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
history = clf.fit(train_ds, validation_data=val_ds, epochs=EPOCHS)
loss, accuracy = clf.evaluate(val_ds, verbose=0)
print(f"validation accuracy {accuracy:.2%}")
""",
        ),
        (
            "code",
            """import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, key in zip(axes, ["loss", "accuracy"]):
    ax.plot(history.history[key], label="train")
    ax.plot(history.history["val_" + key], label="validation")
    ax.set_xlabel("epoch"); ax.set_title(key); ax.legend()
fig.savefig("training_curves.png", bbox_inches="tight")
plt.show()
""",
        ),
        (
            "code",
            """clf.save("vit_msn_finetuned.keras")
restored = keras.saving.load_model("vit_msn_finetuned.keras")
batch = next(iter(val_ds))[0]
np.testing.assert_allclose(
    restored.predict(batch, verbose=0), clf.predict(batch, verbose=0), atol=1e-5
)
print("saved and reloaded: predictions identical")
""",
        ),
    ],
)

LOWSHOT = notebook(
    "Low-shot evaluation of ViT-MSN",
    "The MSN paper's protocol: frozen CLS features (last block, before the final "
    "LayerNorm), centred and L2-normalised, and an L2-regularised logistic regression "
    "trained on 1, 2 and 5 labelled images per class, averaged over 3 random splits.",
    [
        ("code", DATA),
        (
            "code",
            """from keras_vitmsn import lowshot

SHOTS = (1, 2, 5)
backbone = kv.ViTMSNBackbone.from_preset(PRESET)
converter = kv.ViTMSNImageConverter.from_preset(PRESET)
images = folder.load(backbone.image_shape[:2])
# Hold out half of each class as the test set; the rest is the labelled pool.
rng = np.random.default_rng(0)
test_idx = []
for c in range(len(folder.class_names)):
    members = np.flatnonzero(folder.labels == c)
    test_idx.append(rng.permutation(members)[: max(1, len(members) // 2)])
test_idx = np.concatenate(test_idx)
pool_idx = np.setdiff1d(np.arange(len(folder)), test_idx)
results = lowshot.lowshot_eval(
    backbone, images[pool_idx], images[test_idx],
    train_labels=folder.labels[pool_idx], test_labels=folder.labels[test_idx],
    shots=SHOTS, num_splits=3, preprocessing=converter, verbose=0,
)
print(lowshot.format_table(results, title=f"{PRESET}: low-shot top-1"))
""",
        ),
        (
            "code",
            """import matplotlib.pyplot as plt

means = [100 * results[s].mean for s in SHOTS]
stds = [100 * results[s].std for s in SHOTS]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.bar([str(s) for s in SHOTS], means, yerr=stds, capsize=6, color="#4c72b0")
ax.set_xlabel("labelled images per class"); ax.set_ylabel("top-1 (%)"); ax.set_ylim(0, 100)
ax.set_title("Low-shot logistic regression on frozen MSN features")
fig.savefig("low_shot.png", bbox_inches="tight")
plt.show()
""",
        ),
    ],
)


def main():
    for name, nb in [
        ("01_quickstart.ipynb", QUICKSTART),
        ("02_finetune_tfdata.ipynb", FINETUNE),
        ("03_low_shot.ipynb", LOWSHOT),
    ]:
        nbformat.validate(nb)
        nbformat.write(nb, os.path.join(HERE, name))
        print("wrote", name)


if __name__ == "__main__":
    main()
