"""Real-recording readers and preprocessing: BUT PPG records written with wfdb.wrsamp in the PhysioNet
layout, .vital files written with the vitaldb package, gates and SQIs on known signals, bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import read_parquet
from biosig.data.channels import QUALITY_CHANNELS
from biosig.data.preprocess import (
    Gates,
    PreprocessConfig,
    bandpass,
    beats,
    clipped_fraction,
    ecg_template_sqi,
    gate,
    longest_flat_run,
    ppg_skewness,
    prepare_channels,
    window_recording,
)
from biosig.data.sources import SourceOptions, load_source
from biosig.errors import ConfigError, DataError, FileProblem
from tests.helpers import finished_runs

wfdb = pytest.importorskip("wfdb")


def cardiac(seconds: float, fs: float, hr: float = 72.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ECG, PPG) with clear beats: a narrow R wave and an asymmetric pulse, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    phase = np.mod(t * hr / 60, 1.0)
    ecg = np.exp(-0.5 * ((phase - 0.3) / 0.012) ** 2) - 0.15 * np.exp(-0.5 * ((phase - 0.33) / 0.01) ** 2) \
        + 0.2 * np.exp(-0.5 * ((phase - 0.6) / 0.05) ** 2) + rng.normal(0, 0.01, t.size)
    ppg = np.exp(-0.5 * ((phase - 0.45) / 0.06) ** 2) + 0.3 * np.exp(-0.5 * ((phase - 0.65) / 0.08) ** 2) \
        + rng.normal(0, 0.01, t.size)
    return ecg, ppg


def write_butppg_record(root, rid: str, *, acc: bool = True, seconds: float = 10.0, seed: int = 0,
                        ppg_header_fs: float = 30):
    folder = root / rid
    folder.mkdir()
    ecg, _ = cardiac(seconds, 1000, seed=seed)
    _, ppg = cardiac(seconds, 30, seed=seed)
    colours = np.column_stack([ppg, 0.8 * ppg, 0.5 * ppg])
    wfdb.wrsamp(f"{rid}_PPG", fs=ppg_header_fs, units=["nu"] * 3, sig_name=["R", "G", "B"], p_signal=colours, fmt=["16"] * 3,
                adc_gain=[1000.0] * 3, baseline=[0] * 3, write_dir=str(folder))
    wfdb.wrsamp(f"{rid}_ECG", fs=1000, units=["mV"], sig_name=["ECG"], p_signal=ecg[:, None], fmt=["16"],
                adc_gain=[1000.0], baseline=[0], write_dir=str(folder))
    if acc:
        rng = np.random.default_rng(seed)
        motion = np.column_stack([rng.normal(0, 0.02, int(seconds * 100)) + g for g in (0.1, 0.2, 0.97)])
        wfdb.wrsamp(f"{rid}_ACC", fs=100, units=["g"] * 3, sig_name=["X", "Y", "Z"], p_signal=motion,
                    fmt=["16"] * 3, adc_gain=[1000.0] * 3, baseline=[0] * 3, write_dir=str(folder))


@pytest.fixture
def butppg(tmp_path):
    root = tmp_path / "butppg"
    root.mkdir()
    write_butppg_record(root, "100001", seed=1)
    write_butppg_record(root, "100002", acc=False, seed=2)
    write_butppg_record(root, "101001", seed=3)
    write_butppg_record(root, "102001", seed=4)
    (root / "102001" / "102001_ECG.hea").write_text("this is not a header\n")
    write_butppg_record(root, "103001", seed=5, ppg_header_fs=300)  # a wrong sampling rate in the header
    (root / "quality-hr-ann.csv").write_text("ID,Quality,HR\n100001,1,72\n100002,0,72\n101001,0,70\n102001,1,71\n"
                                             "103001,1,70\n")
    (root / "subject-info.csv").write_text("ID,Gender,Age\n100,F,30\n")
    return root


def test_butppg_records_become_five_channel_windows_at_125_hz(butppg):
    problems: list[FileProblem] = []
    ws = load_source(f"butppg:{butppg}", SourceOptions(), problems)
    assert ws.channels == QUALITY_CHANNELS and ws.fs == 125.0 and ws.n_samples == 1250
    assert list(ws.subject) == ["100", "101"] and list(ws.labels) == [1, 0]  # 100002 has no ACC: excluded
    ppg = ws.signals[0, QUALITY_CHANNELS.index("PPG")]
    assert 11 <= len(beats(ppg, 125.0)) <= 13  # 72 beats/min over 10 s survive resampling and filtering
    kinds = {(p.file.rsplit("/", 1)[-1], p.kind) for p in problems}
    assert ("102001", "error") in kinds and ("100002", "warning") in kinds and ("103001", "error") in kinds
    assert any("102001_ECG" in p.error for p in problems if p.kind == "error")
    assert any("unequal lengths (PPG 1.00 s, ECG 10.00 s" in p.error for p in problems)  # PPG header says 300 Hz


def test_a_ppg_colour_the_records_lack_skips_them_with_the_reason(butppg):
    problems: list[FileProblem] = []
    with pytest.raises(DataError, match="no window survived"):
        load_source(f"butppg:{butppg}", SourceOptions(ppg_colour=5), problems)
    assert any("100001_PPG.hea has 3 channel(s); ppg_colour=5" in p.error for p in problems)


def test_butppg_zero_fills_missing_acc_with_a_mask_column(butppg):
    ws = load_source(f"butppg:{butppg}", SourceOptions(missing_acc="zero"), [])
    assert list(ws.subject) == ["100", "100", "101"]
    no_acc = ws.meta["acc_present"] == 0
    assert no_acc.sum() == 1 and ws.labels[no_acc][0] == 0
    assert not ws.signals[no_acc][:, :3].any()


def test_log_dataset_from_butppg_with_gates_counts_rejections(butppg, workdir):
    (workdir / "gates.yaml").write_text("window_s: 5\noverlap: 0.5\ngates: {enabled: true, min_cycles: 20}\n")
    assert main(["log-dataset", "--source", f"butppg:{butppg}", "--missing-acc", "zero"]) == 0
    assert len(list((workdir / "data").glob("PPG_10s_accx-accy-accz-ppg-ecg_3windows_primary_*.parquet"))) == 1
    # 5 s windows with 50 % overlap: 3 per 10 s record; a 20-beat minimum rejects every one of them.
    assert main(["log-dataset", "--source", f"butppg:{butppg}", "--preprocess", str(workdir / "gates.yaml")]) == 2
    (workdir / "gates.yaml").write_text("window_s: 5\noverlap: 0.5\ngates: {enabled: true, min_cycles: 3}\n")
    assert main(["log-dataset", "--source", f"butppg:{butppg}", "--preprocess", str(workdir / "gates.yaml")]) == 0
    (path,) = (workdir / "data").glob("PPG_5s_accx-accy-accz-ppg-ecg_6windows_primary_*.parquet")
    ws = read_parquet(path)
    assert ws.order.tolist() == [[100001, 0], [100001, 1], [100001, 2], [101001, 0], [101001, 1], [101001, 2]]
    run = max(finished_runs("FINISHED"), key=lambda r: r.info.start_time)
    rows = list(csv.DictReader(open(MlflowClient().download_artifacts(run.info.run_id, "dataset/data_errors.csv"))))
    assert {"error", "warning"} <= {r["kind"] for r in rows}


def test_all_windows_rejected_is_an_error_not_an_empty_dataset(butppg):
    config = PreprocessConfig(window_s=5, gates=Gates(min_cycles=50))
    from biosig.data.recordings import read_butppg

    with pytest.raises(DataError, match="no window survived"):
        read_butppg(butppg, config, [])


def test_missing_labels_and_a_missing_s3_prefix(butppg, s3):
    (butppg / "quality-hr-ann.csv").write_text("ID,Quality,HR\n100001,1,72\n")
    problems: list[FileProblem] = []
    ws = load_source(f"butppg:{butppg}", SourceOptions(), problems)
    assert list(ws.labels) == [1, -1]
    assert any("no Quality for record(s) ['101001'" in p.error for p in problems)
    with pytest.raises(DataError, match="no objects under s3://models/nothing-here/"):
        load_source("butppg:s3://models/nothing-here/", SourceOptions(), [])


def test_butppg_from_an_s3_prefix(butppg, s3):
    for path in butppg.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "models", f"butppg/{path.relative_to(butppg)}")
    ws = load_source("butppg:s3://models/butppg/", SourceOptions(), [])
    assert list(ws.subject) == ["100", "101"]


def test_vitaldb_files_become_unlabelled_1024_sample_windows(tmp_path):
    vitaldb = pytest.importorskip("vitaldb")
    folder = tmp_path / "vital"
    folder.mkdir()
    for case, seconds in (("0001", 40.0), ("0002", 25.0)):
        ecg, ppg = cardiac(seconds, 500, seed=int(case))
        vf = vitaldb.VitalFile()
        vf.dtstart, vf.dtend = 1.7e9, 1.7e9 + seconds
        vf.add_track("SNUADC/ECG_II", [{"dt": 1.7e9, "val": ecg.astype(np.float32)}], srate=500, unit="mV")
        vf.add_track("SNUADC/PLETH", [{"dt": 1.7e9, "val": ppg.astype(np.float32)}], srate=500, unit="")
        vf.to_vital(str(folder / f"{case}.vital"))
    (folder / "broken.vital").write_bytes(b"not a vital file")
    problems: list[FileProblem] = []
    ws = load_source(f"vitaldb:{folder}", SourceOptions(), problems)
    assert ws.channels == ["PPG", "ECG"] and ws.n_samples == 1024 and ws.fs == 125.0
    assert dict(zip(*np.unique(ws.subject, return_counts=True))) == {"0001": 4, "0002": 3}
    assert (ws.labels == -1).all()
    assert [p.kind for p in problems if "broken" in p.file] == ["error"]
    ecg, _ = cardiac(20.0, 500)
    only_ecg = vitaldb.VitalFile()
    only_ecg.dtstart, only_ecg.dtend = 1.7e9, 1.7e9 + 20
    only_ecg.add_track("SNUADC/ECG_II", [{"dt": 1.7e9, "val": ecg.astype(np.float32)}], srate=500, unit="mV")
    only_ecg.to_vital(str(folder / "0003.vital"))
    problems = []
    load_source(f"vitaldb:{folder}", SourceOptions(), problems)
    assert any("0003.vital: track(s) ['SNUADC/PLETH'] not found" in p.error for p in problems if p.kind == "error")
    (tmp_path / "cases.csv").write_text("case,label\n0001,1\n")
    problems = []
    labelled = load_source(f"vitaldb:{folder}", SourceOptions(labels=str(tmp_path / "cases.csv")), problems)
    assert dict(zip(labelled.subject, labelled.labels)) == {"0001": 1, "0002": -1}
    assert any("no label for case(s) ['0002']" in p.error for p in problems)


# --- preprocessing units -------------------------------------------------------------------------------

def test_gates_reject_flat_lines_clipping_noise_and_keep_clean_windows():
    fs = 125.0
    ecg, ppg = cardiac(10, fs)
    clean = np.stack([bandpass(ppg, fs, 0.5, 8), bandpass(ecg, fs, 0.5, 40)])
    gates = Gates()
    assert gate(clean, ["PPG", "ECG"], fs, gates) is None
    assert ecg_template_sqi(clean[1], fs) > 0.9 and ppg_skewness(clean[0]) > 0
    flat = clean.copy()
    flat[0, 300:500] = flat[0, 300]
    assert longest_flat_run(flat[0]) >= 200 and gate(flat, ["PPG", "ECG"], fs, gates) == "flat_line:PPG"
    clipped = clean.copy()
    clipped[1] = np.clip(clipped[1], -0.05, 0.05)
    assert clipped_fraction(clipped[1]) > 0.1 and gate(clipped, ["PPG", "ECG"], fs, gates) == "clipping:ECG"
    noisy = clean.copy()
    noisy[1] = np.random.default_rng(0).normal(size=noisy.shape[1])
    assert ecg_template_sqi(noisy[1], fs) < 0.5 and gate(noisy, ["PPG", "ECG"], fs, gates) == "ecg_template_sqi"


def test_windowing_with_overlap_and_unequal_lengths():
    config = PreprocessConfig(window_s=4, overlap=0.5, gates=Gates(enabled=False))
    ecg, ppg = cardiac(10, 500)
    channels, x = prepare_channels({"PPG": (ppg, 500.0), "ECG": (ecg, 500.0)}, config, "rec")
    assert x.shape == (2, 1250)
    windows = window_recording(channels, x, config)
    assert windows.signals.shape == (4, 2, 500) and windows.starts.tolist() == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(DataError, match=r"rec: channels have unequal lengths \(PPG 10.00 s, ECG 6.00 s\)"):
        prepare_channels({"PPG": (ppg, 500.0), "ECG": (ecg[:3000], 500.0)}, config, "rec")
    with pytest.raises(DataError, match="sampling rate 0"):
        prepare_channels({"PPG": (ppg, 0.0)}, config, "rec")


def test_preprocess_yaml_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("window_s: 10\nchannels: {ECG: {bandpass: [0.5, 80]}}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: .*band-pass of ECG .* 62.5 Hz"):
        PreprocessConfig.from_yaml(bad)
    bad.write_text("gates: {ecg_sqi: 0.3}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: unknown gate\(s\) \['ecg_sqi'\]"):
        PreprocessConfig.from_yaml(bad)
    bad.write_text("overlap: 1.5\n")
    with pytest.raises(ConfigError, match="overlap must be in"):
        PreprocessConfig.from_yaml(bad)
