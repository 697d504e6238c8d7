import pytest

from biosig.backbones.mamba2 import mamba2_name
from biosig.backbones.ttm import ttm_name
from biosig.errors import ConfigError
from biosig.registry.naming import is_conventional, parse_name


@pytest.mark.parametrize("name", [
    "ttm_ppg-ecg_c1024_p128_m40_mae",
    "ttm_ppg-ecg_c1024_p64_h96_fcst",
    "ttm_accx-accy-accz-ppg-ecg_c1024_p128_m40_mae_mix",
    "mamba2_eeg_d256_l2_m20_mae",
    "mamba2_eeg_d128_l4_m50_bert_finetuned",
    "ttm_ppg-ecg_c1024_p128_m40_mae_finetuned",
])
def test_format_and_parse_round_trip(name):
    parsed = parse_name(name)
    assert str(parsed) == name
    assert parsed.finetuned == name.endswith("_finetuned")


def test_fields_from_configs_match_the_issue_examples():
    assert mamba2_name(modality="EEG", d_model=256, num_layers=2, mask_ratio=0.2,
                       masking_style="mae") == "mamba2_eeg_d256_l2_m20_mae"
    assert ttm_name(channels=["PPG", "ECG"], context_length=1024, patch_length=128, objective="mae",
                    mask_ratio=0.4) == "ttm_ppg-ecg_c1024_p128_m40_mae"
    parsed = parse_name("mamba2_eeg_d256_l2_m20_mae_finetuned")
    assert parsed.arch == "mamba2" and parsed.fields["d_model"] == 256 and parsed.fields["mask_ratio"] == 0.2
    assert parsed.pretrained == "mamba2_eeg_d256_l2_m20_mae"


@pytest.mark.parametrize("bad", ["ttm_ppg-ecg_c1024_p128", "mamba2_eeg_d256_l2_m20_gpt", "resnet18",
                                 "ttm_PPG_c1024_p128_m40_mae", "mamba2_eeg_d256_l2_m20_mae_finetuned_x"])
def test_non_conventional_names_are_explained(bad):
    assert not is_conventional(bad)
    with pytest.raises(ConfigError, match="does not follow the naming convention"):
        parse_name(bad)


def test_out_of_range_fields():
    with pytest.raises(ConfigError, match=r"mask_ratio must be in \(0, 1\)"):
        mamba2_name(modality="eeg", d_model=8, num_layers=1, mask_ratio=1.0, masking_style="mae")
    with pytest.raises(ConfigError, match="masking_style must be 'mae' or 'bert'"):
        mamba2_name(modality="eeg", d_model=8, num_layers=1, mask_ratio=0.2, masking_style="gpt")
