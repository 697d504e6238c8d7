"""Pretraining (masked reconstruction), fine-tuning (staged schedule), metrics, calibration."""
