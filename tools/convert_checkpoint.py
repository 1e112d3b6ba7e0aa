"""Convert a ViT-MSN checkpoint to a Keras preset, optionally checking it against transformers.

    python tools/convert_checkpoint.py --source hf://facebook/vit-msn-small \
        --output presets/vit_msn_small --verify

--source is "hf://org/repo", a built-in preset name (vit_msn_small ...), a transformers
checkpoint directory (save_pretrained), or an original facebookresearch/msn
``*.pth.tar`` file. The preset is written to --output (see docs/presets.md for
the layout and for uploading it to the Hugging Face hub or Kaggle).

--verify (needs torch and transformers) reloads the written preset with
``ViTMSNBackbone.from_preset(output)``, runs it and ``transformers.ViTMSNModel`` on the
same random pixels, prints the max abs difference of ``last_hidden_state`` (and of
the logits for classification checkpoints) and fails above 1e-4. For an original MSN
checkpoint the transformers reference is built from the same re-keyed weights and
loaded through transformers' own ``from_pretrained`` key handling.

--upload-hf REPO uploads the finished preset with huggingface_hub (needs a token:
``hf auth login``).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

TOLERANCE = 1e-4


def _transformers_reference(source, task, num_heads):
    """The transformers model for ``source`` (eval mode, eager attention)."""
    import transformers

    import keras_vitmsn as kv
    from keras_vitmsn.conversion import msn_checkpoint

    cls = transformers.ViTMSNForImageClassification if task else transformers.ViTMSNModel
    if kv.presets.is_preset_name(source):
        source = kv.presets.get_preset(source)["hf_handle"]
    if source.startswith("hf://"):
        model = cls.from_pretrained(source[len("hf://") :])
    elif os.path.isdir(source):
        model = cls.from_pretrained(source)
    elif msn_checkpoint.is_msn_checkpoint_path(source):
        model = _transformers_from_msn(source, num_heads)
    else:
        raise ValueError(f"Cannot build a transformers reference for {source!r}.")
    model.set_attn_implementation("eager")
    return model.eval()


def _transformers_from_msn(path, num_heads):
    """transformers.ViTMSNModel holding an MSN checkpoint's target encoder (with the
    number of heads of the written preset: the weights do not record it)."""
    import transformers
    from safetensors.numpy import save_file

    from keras_vitmsn.conversion import msn_checkpoint

    raw = msn_checkpoint.read_msn_checkpoint(path)
    kwargs = msn_checkpoint.msn_backbone_kwargs(raw["backbone_state"])
    config = transformers.ViTMSNConfig(
        hidden_size=kwargs["hidden_dim"],
        num_hidden_layers=kwargs["num_layers"],
        num_attention_heads=num_heads,
        intermediate_size=kwargs["intermediate_dim"],
        image_size=kwargs["image_shape"][0],
        patch_size=kwargs["patch_size"],
        num_channels=kwargs["image_shape"][2],
        qkv_bias=kwargs["qkv_bias"],
        layer_norm_eps=kwargs["layer_norm_epsilon"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        state = {
            k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw["backbone_state"].items()
        }
        save_file(state, os.path.join(tmp, "model.safetensors"))
        return transformers.ViTMSNModel.from_pretrained(tmp)


def verify(source, output, seed=0):
    """Max abs differences between the written preset and transformers (printed)."""
    import keras
    import torch

    import keras_vitmsn as kv

    backbone = kv.ViTMSNBackbone.from_preset(output, data_format="channels_first")
    task = os.path.exists(os.path.join(output, "task.json"))
    reference = _transformers_reference(source, task, backbone.num_heads)
    (height, width), channels = backbone.image_size, backbone.num_channels
    pixels = (
        np.random.default_rng(seed).standard_normal((2, channels, height, width)).astype("float32")
    )
    with torch.no_grad():
        ref_out = reference(torch.from_numpy(pixels))
        encoder = reference.vit if task else reference
        ref_hidden = encoder(torch.from_numpy(pixels)).last_hidden_state.numpy()
    ours = keras.ops.convert_to_numpy(backbone(pixels)["last_hidden_state"])
    diffs = {"last_hidden_state": float(np.max(np.abs(ours - ref_hidden)))}
    if task:
        classifier = kv.ViTMSNClassifier.from_preset(
            output, preprocessor=None, data_format="channels_first"
        )
        logits = keras.ops.convert_to_numpy(classifier(pixels))
        diffs["logits"] = float(np.max(np.abs(logits - ref_out.logits.numpy())))
    return diffs


def upload_to_hf(output, repo_id):
    import huggingface_hub

    huggingface_hub.create_repo(repo_id, exist_ok=True)
    huggingface_hub.upload_folder(repo_id=repo_id, folder_path=output)
    print(f"Uploaded {output} to https://huggingface.co/{repo_id}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", required=True, help="hf://org/repo, preset name, DIR or FILE.pth.tar"
    )
    parser.add_argument("--output", required=True, help="directory to write the Keras preset to")
    parser.add_argument(
        "--num-heads",
        type=int,
        help="heads of an MSN checkpoint of a width none of the released models has",
    )
    parser.add_argument(
        "--verify", action="store_true", help="compare with transformers (max abs diff <= 1e-4)"
    )
    parser.add_argument(
        "--upload-hf", metavar="REPO", help="upload the preset to this hub repository"
    )
    args = parser.parse_args(argv)

    import keras_vitmsn as kv

    backbone = kv.convert_to_preset(args.source, args.output, num_heads=args.num_heads)
    print(
        f"Wrote {args.output}: {sorted(os.listdir(args.output))} "
        f"({backbone.count_params():,} backbone parameters)"
    )
    status = 0
    if args.verify:
        diffs = verify(args.source, args.output)
        print("verify: max abs diff vs transformers: " + json.dumps(diffs))
        worst = max(diffs.values())
        if worst > TOLERANCE:
            print(f"verify FAILED: {worst:.3e} > {TOLERANCE}", file=sys.stderr)
            status = 1
        else:
            print(f"verify OK (<= {TOLERANCE})")
    if args.upload_hf and status == 0:
        upload_to_hf(args.output, args.upload_hf)
    return status


if __name__ == "__main__":
    sys.exit(main())
