"""The released ViT-MSN checkpoints: one table for names, architectures and provenance.

Every preset resolves to a Hugging Face hub repository (``hf_handle``); the weights are
fetched from there on first use, converted, and cached as a Keras preset (see
:mod:`keras_vitmsn.presets.resolve`). The table is the single source of truth for
``ViTMSNBackbone.presets``, ``ViTMSNClassifier.presets`` and
``ViTMSNImageConverter.presets``.

Licences: the hub model cards (``facebook/vit-msn-*``, written by Hugging Face) declare
``apache-2.0``. The original code and checkpoints in facebookresearch/msn are
distributed under that repository's LICENSE file, which is CC-BY-NC 4.0
(non-commercial). Check both before commercial use.
"""

import copy

MSN_SOURCE = "https://github.com/facebookresearch/msn"
PAPER = "https://arxiv.org/abs/2204.07141"

_COMMON_ARCHITECTURE = dict(
    image_shape=(224, 224, 3),
    layer_norm_epsilon=1e-6,
    qkv_bias=True,
    hidden_act="gelu",
)


def _preset(
    name,
    description,
    params,
    repo,
    original_checkpoint,
    epochs,
    patch_size,
    hidden_dim,
    num_layers,
    num_heads,
    intermediate_dim,
    notes="",
):
    architecture = dict(
        _COMMON_ARCHITECTURE,
        patch_size=patch_size,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_dim=intermediate_dim,
    )
    return name, {
        "metadata": {
            "description": description,
            "params": params,
            "patch_size": patch_size,
            "image_size": (224, 224),
            "official_name": "ViT-MSN",
            "path": "vit_msn",
            "model_card": f"https://huggingface.co/{repo}",
            "source": MSN_SOURCE,
            "paper": PAPER,
            "license": "apache-2.0",
            "license_note": (
                "apache-2.0 is what the Hugging Face model card declares; the original "
                "facebookresearch/msn release is CC-BY-NC 4.0."
            ),
            "original_checkpoint": original_checkpoint,
            "pretraining_epochs": epochs,
            "notes": notes,
        },
        "hf_handle": f"hf://{repo}",
        "architecture": architecture,
    }


_LARGE_NOTE = (
    "The hub config sets hidden_dropout_prob=0.1 (added by the transformers converter; "
    "MSN pretraining used 0); from_preset keeps the hub value, pass dropout_rate=0.0 "
    "to change it."
)

_PRESETS = dict(
    [
        _preset(
            "vit_msn_small",
            "ViT-S/16 pretrained with MSN on ImageNet-1k (800 epochs), 224x224.",
            21_665_664,
            "facebook/vit-msn-small",
            "vits16_800ep.pth.tar",
            800,
            patch_size=16,
            hidden_dim=384,
            num_layers=12,
            num_heads=6,
            intermediate_dim=1536,
        ),
        _preset(
            "vit_msn_base",
            "ViT-B/16 pretrained with MSN on ImageNet-1k (600 epochs), 224x224.",
            85_798_656,
            "facebook/vit-msn-base",
            "vitb16_600ep.pth.tar",
            600,
            patch_size=16,
            hidden_dim=768,
            num_layers=12,
            num_heads=12,
            intermediate_dim=3072,
        ),
        _preset(
            "vit_msn_large",
            "ViT-L/16 pretrained with MSN on ImageNet-1k (600 epochs), 224x224.",
            303_301_632,
            "facebook/vit-msn-large",
            "vitl16_600ep.pth.tar",
            600,
            patch_size=16,
            hidden_dim=1024,
            num_layers=24,
            num_heads=16,
            intermediate_dim=4096,
            notes=_LARGE_NOTE,
        ),
        _preset(
            "vit_msn_base_4",
            "ViT-B/4 pretrained with MSN on ImageNet-1k (300 epochs), 224x224, 3136 patch tokens.",
            87_503_616,
            "facebook/vit-msn-base-4",
            "vitb4_300ep.pth.tar",
            300,
            patch_size=4,
            hidden_dim=768,
            num_layers=12,
            num_heads=12,
            intermediate_dim=3072,
        ),
        _preset(
            "vit_msn_large_7",
            "ViT-L/7 pretrained with MSN on ImageNet-1k (200 epochs), 224x224, 1024 patch tokens.",
            303_513_600,
            "facebook/vit-msn-large-7",
            "vitl7_200ep.pth.tar",
            200,
            patch_size=7,
            hidden_dim=1024,
            num_layers=24,
            num_heads=16,
            intermediate_dim=4096,
            notes=_LARGE_NOTE,
        ),
    ]
)


def preset_names():
    """Names of the built-in presets, in release order."""
    return tuple(_PRESETS)


def list_presets():
    """A deep copy of the preset table: ``{name: {"metadata", "hf_handle", "architecture"}}``.

    Example:
    >>> sorted(list_presets())[:2]
    ['vit_msn_base', 'vit_msn_base_4']
    >>> list_presets()["vit_msn_small"]["hf_handle"]
    'hf://facebook/vit-msn-small'
    """
    return copy.deepcopy(_PRESETS)


def get_preset(name):
    """The table entry of one built-in preset.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in _PRESETS:
        raise ValueError(
            f"Unknown ViT-MSN preset {name!r}. Valid preset names: "
            f"{', '.join(_PRESETS)}. from_preset also accepts 'hf://org/repo', a local "
            "directory (a Keras preset or a transformers checkpoint) or an original "
            "MSN '.pth.tar' file."
        )
    return copy.deepcopy(_PRESETS[name])


def is_preset_name(name):
    return isinstance(name, str) and name in _PRESETS


def preset_for_original_checkpoint(filename):
    """The preset whose original MSN checkpoint has this file name, or None."""
    for name, entry in _PRESETS.items():
        if entry["metadata"]["original_checkpoint"] == filename:
            return name
    return None


def architecture_parameter_count(architecture):
    """Backbone parameters implied by an architecture dict (no mask token)."""
    height, width, channels = architecture["image_shape"]
    patch = architecture["patch_size"]
    dim = architecture["hidden_dim"]
    inner = architecture["intermediate_dim"]
    tokens = (height // patch) * (width // patch) + 1
    bias = dim if architecture.get("qkv_bias", True) else 0
    block = 3 * (dim * dim + bias) + (dim * dim + dim) + 4 * dim + 2 * dim * inner + inner + dim
    embeddings = patch * patch * channels * dim + dim + dim + tokens * dim
    return embeddings + architecture["num_layers"] * block + 2 * dim
