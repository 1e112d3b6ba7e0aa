"""Every Python snippet of README.md and docs/*.md runs as written, offline, on tiny stand-ins.

Each built-in preset's hf:// cache entry is pre-filled with a tiny backbone of the
same image size and patch size (what a download would have cached), ``my_images/``
holds a few PNGs, and each snippet runs in its own process (they set backends and
distributions) on this working tree's package. The only edits are listed in
``SUBSTITUTIONS``: run lengths.

Snippets that upload (``upload_preset``) run against local stand-ins of the two hubs
(``HUB_STAND_INS``, run before such a snippet): an upload to Hugging Face lands in
huggingface_hub's cache, one to Kaggle in kagglehub's cache as the next version, where
``from_preset("hf://...")`` / ``from_preset("kaggle://...")`` then find it, as they
would after a download. Everything else, preset checks included, runs for real.

The export table of docs/deploy.md names a reload line per format; each runs as
written (``test_deploy_table_reload_lines_run``) on an artefact of a tiny classifier,
on the backends that write that format.

A snippet that cannot run offline (it needs the network or credentials) is preceded by
an HTML comment ``<!-- not run: REASON -->`` on the line just before its fence; it is
reported as skipped with that reason.
"""

import ast
import glob
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vitmsn as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md"] + sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
SUBSTITUTIONS = {"epochs=100, batch_size=64": "epochs=1, warmup_epochs=0, batch_size=4"}
HUB_STAND_INS = """
import os as _os
import shutil as _shutil
import sys as _sys

import huggingface_hub as _hf

_sys.path.insert(0, {tests!r})
from checkpoint_helpers import populate_hf_cache as _populate_hf_cache


def _create_repo(self, repo_id, **kwargs):
    pass


def _upload_folder(self, *, repo_id, folder_path, **kwargs):
    files = {{n: _os.path.join(folder_path, n) for n in _os.listdir(folder_path)}}
    _populate_hf_cache(_os.environ["HF_HUB_CACHE"], repo_id, files)


def _model_upload(handle, local_model_dir, **kwargs):
    base = _os.path.join(_os.environ["KAGGLEHUB_CACHE"], "models", *handle.split("/"))
    names = _os.listdir(base) if _os.path.isdir(base) else []
    version = 1 + max((int(n.split(".")[0]) for n in names if n.endswith(".complete")), default=0)
    _shutil.copytree(local_model_dir, _os.path.join(base, str(version)))
    open(_os.path.join(base, f"{{version}}.complete"), "w").close()


_hf.HfApi.create_repo = _create_repo
_hf.HfApi.upload_folder = _upload_folder
import kagglehub as _kagglehub

_kagglehub.model_upload = _model_upload
""".format(tests=os.path.join(ROOT, "tests"))
FENCE = re.compile(
    r"^(?:<!-- not run: (?P<reason>[^\n]*?) -->\n)?"
    r"(?P<indent> *)```python\n(?P<body>.*?)^(?P=indent)```",
    flags=re.S | re.M,
)


def python_snippets(text):
    """(code, reason-not-run or None) for each ```python block, indentation removed."""
    snippets = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        lines = [line[indent:] for line in match["body"].splitlines()]
        snippets.append(("\n".join(lines) + "\n", match["reason"]))
    return snippets


def collect():
    params = []
    for document in DOCUMENTS:
        text = open(os.path.join(ROOT, document), encoding="utf-8").read()
        snippets = python_snippets(text)
        # Every fence is found: a block the pattern missed would silently go untested.
        assert len(snippets) == len(re.findall(r"^ *```python$", text, flags=re.M)), document
        for index, (code, reason) in enumerate(snippets):
            marks = [pytest.mark.skip(reason=f"not run: {reason}")] if reason else []
            params.append(pytest.param(code, id=f"{document}:{index}", marks=marks))
    return params


SNIPPETS = collect()


def run_snippet(code, workspace):
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    if "upload_preset" in code:
        code = HUB_STAND_INS + code
    env = dict(
        os.environ,
        KERAS_HOME=str(workspace / "keras_home"),
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(workspace / "hf_cache"),
        KAGGLEHUB_CACHE=str(workspace / "kagglehub"),
        KERAS_BACKEND=keras.backend.backend(),
        # The package under test, wherever (or whether) it is installed.
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    )
    env.pop("KAGGLE_KERNEL_RUN_TYPE", None)  # not a Kaggle notebook
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from PIL import Image

    from keras_vitmsn.conversion.hub import cache_dir_for

    root = tmp_path_factory.mktemp("readme")
    home = root / "keras_home"
    for name, info in kv.presets.list_presets().items():
        arch = info["architecture"]
        backbone = kv.ViTMSNBackbone(
            image_shape=tuple(arch["image_shape"]),
            patch_size=arch["patch_size"],
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
        )
        entry = cache_dir_for(info["hf_handle"][len("hf://") :]).replace(
            kv.utils.keras_home(), str(home)
        )
        backbone.save_to_preset(entry)
        kv.ViTMSNImageConverter(image_size=tuple(arch["image_shape"][:2])).save_to_preset(entry)
    images = root / "my_images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype("uint8")).save(images / f"{i}.png")
    return root


def test_documents_have_python_snippets():
    ids = [param.id for param in SNIPPETS]
    assert sum(i.startswith("README.md:") for i in ids) >= 3
    assert {"docs/deploy.md", "docs/msn.md", "docs/performance.md", "docs/presets.md"} <= {
        i.split(":")[0] for i in ids
    }
    # Snippets marked not to run stay the exception.
    assert sum(bool(param.marks) for param in SNIPPETS) <= 3


def test_marker_and_failure_detection(tmp_path):
    text = (
        "```python\nprint(1)\n```\n\n<!-- not run: needs hub -->\n```python\nimport x\n```\n"
        "- item\n\n  ```python\n  assert False, 'broken'\n  ```\n"
    )
    snippets = python_snippets(text)
    assert snippets == [
        ("print(1)\n", None),
        ("import x\n", "needs hub"),
        ("assert False, 'broken'\n", None),
    ]
    # A broken snippet fails its run: the runner reports a non-zero exit status.
    (tmp_path / "keras_home").mkdir()
    assert run_snippet(snippets[2][0], tmp_path).returncode != 0
    assert run_snippet(snippets[0][0], tmp_path).returncode == 0


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, workspace):
    result = run_snippet(code, workspace)
    assert result.returncode == 0, f"{code}\n{result.stderr[-4000:]}"


def deploy_reload_lines():
    """``{format: code}`` from the "reload with" column of docs/deploy.md's export table."""
    text = open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8").read()
    rows, header = {}, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and "reload with" in cells:
            header = cells
        elif header is not None and line.startswith("| ---"):
            continue
        elif header is not None and line.startswith("|"):
            fmt = re.search(r'`"(\w+)"`', cells[0])[1]
            rows[fmt] = re.fullmatch(r"`([^`]+)`", cells[header.index("reload with")])[1]
        elif header is not None:
            break
    return rows


RELOAD_LINES = deploy_reload_lines()
RUNTIMES = {"tf_saved_model": "tensorflow", "onnx": "onnxruntime", "torch": "torch"}


def test_deploy_table_has_a_reload_line_per_format():
    assert set(RELOAD_LINES) == set(RUNTIMES)


@pytest.mark.parametrize("fmt", sorted(RUNTIMES))
def test_deploy_table_reload_lines_run(fmt, tmp_path):
    """The line runs as written, with ``path`` the artefact and ``images`` a NumPy uint8
    batch (the names the table uses), and its value is the model's output."""
    from keras_vitmsn.models.export import supported_export_formats

    if fmt not in supported_export_formats():
        pytest.skip(f"format={fmt!r} is not written on the {keras.backend.backend()} backend")
    runtime = pytest.importorskip(RUNTIMES[fmt])
    code = RELOAD_LINES[fmt]
    backbone = kv.ViTMSNBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    clf = kv.ViTMSNClassifier(
        backbone, num_classes=3, preprocessor=kv.ViTMSNImageConverter(image_size=(32, 32))
    )
    path = str(tmp_path / {"onnx": "clf.onnx", "torch": "clf.pt2"}.get(fmt, "clf_savedmodel"))
    clf.export(path, format=fmt)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype="uint8")
    alias = {"tensorflow": "tf"}.get(RUNTIMES[fmt], RUNTIMES[fmt])
    namespace = {"path": path, "images": images, alias: runtime, "np": np}
    *statements, last = ast.parse(code).body
    assert isinstance(last, ast.Expr), f"{code!r} should end with the expression it reloads"
    exec(compile(ast.Module(statements, type_ignores=[]), "deploy.md", "exec"), namespace)
    out = eval(compile(ast.Expression(last.value), "deploy.md", "eval"), namespace)
    out = out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)
    np.testing.assert_allclose(out, clf.predict(images, verbose=0), atol=1e-5)
