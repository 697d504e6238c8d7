"""Published foundation models in and out (docs/foundation-models.md): granite-tsfm Hugging Face folders, saved
by granite-tsfm's own classes with `save_pretrained` at the published shapes, import with nothing typed by hand
and compute exactly what granite-tsfm computes; the same bytes never make a second version; training-framework
wrappers are recognised; what cannot be honoured is one line naming the field; imported models fine-tune on
defaults; export writes a folder `from_pretrained` loads, with the same backbone output."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from biosig.backbones import build_backbone
from biosig.cli import main
from biosig.models.checkpoint import read_meta, read_weights
from tests.helpers import TINY_NAME, finished_runs

QUIET = ["--system-metrics", "false"]


def _ttm(context: int, patch: int, *, d_model: int = 192, levels: int = 0, scaling="std", prefix: bool = False,
         mode: str = "common_channel", channels: int = 1):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    torch.manual_seed(context + levels)
    extra = {"resolution_prefix_tuning": True, "frequency_token_vocab_size": 10} if prefix else {}
    config = TinyTimeMixerConfig(context_length=context, patch_length=patch, patch_stride=patch, d_model=d_model,
                                 num_layers=2, prediction_length=96, num_input_channels=channels, decoder_d_model=128,
                                 decoder_num_layers=2, adaptive_patching_levels=levels, scaling=scaling, mode=mode,
                                 **extra)
    return TinyTimeMixerForPrediction(config).eval()


def _tspulse():
    from tsfm_public.models.tspulse import TSPulseConfig, TSPulseForReconstruction

    torch.manual_seed(3)
    config = TSPulseConfig(context_length=512, patch_length=16, patch_stride=16, d_model=24, decoder_d_model=24,
                           num_layers=2, num_input_channels=1, fuse_fft=True, patch_register_tokens=8, mask_ratio=0.3,
                           mask_type="hybrid", mask_block_length=16, scaling="revin")
    return TSPulseForReconstruction(config).eval()


#: published shapes: r1 (no adaptive patching), r2 (adaptive patching 3, std scaling) at 512/1024/1536,
#: r2.1 (plus resolution prefix tuning), TSPulse (FFT branch, register tokens, RevIN)
PUBLISHED = {
    "ttm-r1-512": (lambda: _ttm(512, 64, levels=0), "ttm_ppg-ecg_c512_p64_h96_fcst"),
    "ttm-r2-512": (lambda: _ttm(512, 64, levels=3), "ttm_ppg-ecg_c512_p64_h96_fcst"),
    "ttm-r2-1024": (lambda: _ttm(1024, 128, levels=3), "ttm_ppg-ecg_c1024_p128_h96_fcst"),
    "ttm-r2.1-1536": (lambda: _ttm(1536, 128, levels=3, prefix=True), "ttm_ppg-ecg_c1536_p128_h96_fcst"),
    "tspulse": (_tspulse, "tspulse_ppg-ecg_c512_p16_m30_mae"),
}


def granite_output(model, past: torch.Tensor) -> torch.Tensor:
    """granite-tsfm's own backbone output for past_values [B, T, C]."""
    kwargs = {"enable_masking": False} if type(model).__name__.startswith("TSPulse") else {}
    if getattr(model.config, "resolution_prefix_tuning", False):
        kwargs["freq_token"] = torch.zeros(past.shape[0], dtype=torch.long)
    with torch.no_grad():
        return model.backbone(past, **kwargs).last_hidden_state


def registered_backbone(name: str, version: str = "1"):
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    path = client.download_artifacts(run_id, "checkpoint")
    meta = read_meta(path)
    backbone = build_backbone(meta["backbone"]["arch"], meta["channels"], meta["backbone"]["config"])
    backbone.load_state_dict(read_weights(path), strict=True)
    return backbone.eval(), meta


@pytest.mark.parametrize("kind", list(PUBLISHED))
def test_a_published_folder_imports_with_only_its_path_and_computes_what_granite_computes(workdir, kind):
    make, name = PUBLISHED[kind]
    model = make()
    model.save_pretrained(workdir / kind)
    assert main(["import-checkpoint", "--path", str(workdir / kind), *QUIET]) == 0
    backbone, meta = registered_backbone(name)
    past = torch.randn(3, model.config.context_length, 2) * 40 + 7  # raw amplitudes: the model's scaler must act
    with torch.no_grad():
        ours = backbone(past.transpose(1, 2))
    theirs = granite_output(model, past)
    n = ours.shape[2]  # TSPulse: biosig takes the time patches; FFT patches and register tokens follow them
    assert torch.allclose(ours, theirs[:, :, :n], atol=1e-5), (ours - theirs[:, :, :n]).abs().max()
    assert meta["backbone"]["config"]["hf_config"]["context_length"] == model.config.context_length
    (run,) = finished_runs("FINISHED")
    report = MlflowClient().download_artifacts(run.info.run_id, "import/report.json")
    report = json.loads(open(report).read())
    assert report["class"] == type(model).__name__ and report["unused_weights"]  # the head, listed not dropped
    assert all(not k.startswith("backbone.") for k in report["unused_weights"])


def test_the_same_bytes_return_the_version_that_holds_them(workdir, capsys):
    _ttm(512, 64, d_model=16, levels=3).save_pretrained(workdir / "r2")
    assert main(["import-checkpoint", "--path", str(workdir / "r2"), *QUIET]) == 0
    assert main(["import-checkpoint", "--path", str(workdir / "r2"), *QUIET]) == 0
    assert "already registered as ttm_ppg-ecg_c512_p64_h96_fcst version 1; nothing imported" in capsys.readouterr().out
    assert len(MlflowClient().search_model_versions("name = 'ttm_ppg-ecg_c512_p64_h96_fcst'")) == 1
    assert len(finished_runs()) == 1
    _ttm(512, 64, d_model=16, levels=2).save_pretrained(workdir / "other")  # other bytes: a second version
    assert main(["import-checkpoint", "--path", str(workdir / "other"), *QUIET]) == 0
    assert len(MlflowClient().search_model_versions("name = 'ttm_ppg-ecg_c512_p64_h96_fcst'")) == 2


def _cache_snapshot(cache, repo: str, revision: str, model) -> None:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/REV, snapshots/COMMIT/…}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    model.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / revision).write_text(commit)


def test_hf_names_resolve_from_the_local_cache_only(workdir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(workdir / "hub"))
    _cache_snapshot(workdir / "hub", "ibm-granite/granite-timeseries-ttm-r2", "1024-96-r2",
                    _ttm(1024, 128, d_model=16, levels=3))
    assert main(["import-checkpoint", "--path", "hf:ibm-granite/granite-timeseries-ttm-r2@1024-96-r2", *QUIET]) == 0
    version = MlflowClient().get_model_version("ttm_ppg-ecg_c1024_p128_h96_fcst", "1")
    assert version.tags["biosig.imported.from"].startswith("hf:ibm-granite/granite-timeseries-ttm-r2@1024-96-r2 (")
    assert version.tags["biosig.imported.class"] == "TinyTimeMixerForPrediction"
    capsys.readouterr()
    assert main(["import-checkpoint", "--path", "hf:ibm-granite/granite-timeseries-ttm-r2@1536-96-r2", *QUIET]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the local Hugging Face cache" in err
    assert "huggingface-cli download ibm-granite/granite-timeseries-ttm-r2 --revision 1536-96-r2" in err


KEYS = ["--arch", "ttm", "--context-length", "64", "--patch-length", "16", "--d-model", "8", "--num-layers", "2",
        "--dropout", "0.0", *QUIET]


def test_training_framework_wrappers_are_recognised_and_reported(workdir):
    backbone = build_backbone("ttm", ["PPG", "ECG"], {"context_length": 64, "patch_length": 16, "d_model": 8,
                                                      "num_layers": 2, "dropout": 0.0})
    granite_keys = {k.removeprefix("model."): v for k, v in backbone.state_dict().items()}
    ema = {k: v + 1.0 for k, v in granite_keys.items()}
    files = {  # Lightning (LightningModule.model = TinyTimeMixerForPrediction), DDP + torch.compile, EMA beside
        "lightning.ckpt": {"state_dict": {f"model.backbone.{k}": v for k, v in granite_keys.items()},
                           "pytorch-lightning_version": "2.5.0", "global_step": 10},
        "ddp_compiled.pt": {f"module._orig_mod.backbone.{k}": v for k, v in granite_keys.items()},
        "ema.pt": {"model_state_dict": {f"backbone.{k}": v for k, v in granite_keys.items()},
                   "ema_state_dict": {f"backbone.{k}": v for k, v in ema.items()}},
    }
    for file, content in files.items():
        torch.save(content, workdir / file)
    assert main(["import-checkpoint", "--path", str(workdir / "lightning.ckpt"), *KEYS]) == 0
    assert main(["import-checkpoint", "--path", str(workdir / "ddp_compiled.pt"), *KEYS]) == 0  # same weights,
    assert main(["import-checkpoint", "--path", str(workdir / "ema.pt"), *KEYS]) == 0  # other bytes: versions
    assert main(["import-checkpoint", "--path", str(workdir / "ema.pt"), "--use-ema", "true", *KEYS]) == 0
    client = MlflowClient()
    wrappers = {str(v.version): v.tags.get("biosig.imported.wrappers", "")
                for v in client.search_model_versions(f"name = '{TINY_NAME}'")}
    assert "Lightning checkpoint (state_dict)" in wrappers["1"]
    assert "torch.compile (_orig_mod.)" in wrappers["2"] and "DistributedDataParallel (module.)" in wrappers["2"]
    assert "EMA copy present (not imported; use_ema=true imports it)" in wrappers["3"]
    assert "EMA copy (imported)" in wrappers["4"]
    raw, _ = registered_backbone(TINY_NAME, "3")
    averaged, _ = registered_backbone(TINY_NAME, "4")
    for key, value in backbone.state_dict().items():
        assert torch.equal(raw.state_dict()[key], value) and torch.equal(averaged.state_dict()[key], value + 1.0)


def _edited(workdir, name: str, **fields):
    folder = workdir / name
    _ttm(512, 64, d_model=16).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return folder


def test_what_biosig_cannot_honour_is_one_line_naming_the_field(workdir, capsys):
    cases = {
        "decompose": _edited(workdir, "decomposed", decompose=True),
        "model_type": _edited(workdir, "patchtst", model_type="patchtst"),
        "num_patches": _edited(workdir, "edited", num_patches=5),
        "num_input_channels": workdir / "mix",
    }
    _ttm(512, 64, d_model=16, mode="mix_channel", channels=3).save_pretrained(workdir / "mix")
    capsys.readouterr()
    for field, folder in cases.items():
        assert main(["import-checkpoint", "--path", str(folder), *QUIET]) == 2, field
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"field '{field}'" in err and "config.json" in err, err
    assert finished_runs() == [] and MlflowClient().search_registered_models() == []
    # the mix_channel model imports with as many channel names as it was trained on
    assert main(["import-checkpoint", "--path", str(workdir / "mix"), "--channels", "PPG,ECG,ACC_X", *QUIET]) == 0


@pytest.mark.parametrize("context,patch", [(512, 64), (1024, 128), (1536, 128)])
def test_imported_models_fine_tune_on_defaults_with_their_own_scaling(workdir, context, patch):
    """Bundled windows are 1,250 samples: cropped for 512/1024, padded for 1536, with no key typed."""
    _ttm(context, patch, d_model=16, levels=3, prefix=context == 1536).save_pretrained(workdir / "ttm")
    assert main(["import-checkpoint", "--path", str(workdir / "ttm"), *QUIET]) == 0
    name = f"ttm_ppg-ecg_c{context}_p{patch}_h96_fcst"
    assert main(["finetune", "--checkpoint", name, "--data", "synthetic:quality", "--n-subjects", "8",
                 "--windows-per-subject", "6", "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "8",
                 *QUIET]) == 0
    import mlflow
    import numpy as np

    from biosig.data.synthetic import synthetic_cardio
    from biosig.registry.pyfunc import as_model_input

    model = mlflow.pyfunc.load_model(f"models:/{name}_finetuned@candidate")
    ws = synthetic_cardio(n_subjects=2, windows_per_subject=3, with_acc=True, window_s=10.0, seed=5)
    signals = ws.signals.astype(np.float32)
    served = np.asarray(model.predict(as_model_input(signals, ws.channels)))
    assert served.shape == (6, 2) and np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
    finetuned = model.unwrap_python_model().meta  # what serving and `evaluate` build the classifier from
    assert finetuned["backbone"]["config"]["scaling"] == "std" and finetuned["backbone"]["config"]["hf_config"]
    if context < signals.shape[-1]:
        # the checkpoint's std scaler runs inside the served model: scaling and shifting every window changes
        # the probabilities only through the scaler's minimum scale on near-flat channels (ACC of good windows)
        rescaled = np.asarray(model.predict(as_model_input(signals * 3.0 + 5.0, ws.channels)))
        assert np.abs(served - rescaled).max() < 2e-3


@pytest.mark.parametrize("kind", ["ttm-r2-512", "tspulse"])
def test_export_round_trip_is_exact(workdir, kind):
    make, name = PUBLISHED[kind]
    original = make()
    original.save_pretrained(workdir / "published")
    assert main(["import-checkpoint", "--path", str(workdir / "published"), *QUIET]) == 0
    assert main(["export", "--model", f"{name}@candidate", "--output", str(workdir / "exported")]) == 0
    exported = type(original).from_pretrained(str(workdir / "exported")).eval()
    past = torch.randn(2, original.config.context_length, 2) * 10
    assert torch.allclose(granite_output(exported, past), granite_output(original, past), atol=1e-6)
    header = yaml.safe_load((workdir / "exported" / "README.md").read_text().split("---")[1])
    assert header["library_name"] == "granite-tsfm" and header["biosig"]["registered_model"] == name


def test_a_biosig_pretrained_backbone_exports_with_its_card(pretrained, workdir, capsys):
    assert main(["export", "--model", TINY_NAME, "--output", str(workdir / "out")]) == 0
    from tsfm_public.models.tinytimemixer import TinyTimeMixerForPrediction

    model, info = TinyTimeMixerForPrediction.from_pretrained(str(workdir / "out"), output_loading_info=True)
    assert not [k for k in info["missing_keys"] if k.startswith("backbone.")]
    backbone, meta = registered_backbone(TINY_NAME)
    x = torch.randn(2, 2, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x), model.eval().backbone(x.transpose(1, 2)).last_hidden_state, atol=1e-6)
    text = (workdir / "out" / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["datasets"] == [meta["provenance"]["dataset"]]
    assert header["model-index"][0]["results"][0]["dataset"]["revision"] == meta["provenance"]["dataset_digest"]
    assert header["metrics"] and "z-score each channel" in text
    capsys.readouterr()
    assert main(["export", "--model", TINY_NAME, "--output", str(workdir / "out")]) == 2  # never overwritten
    assert "exists and is not an empty folder" in capsys.readouterr().err
