"""Backbones, heads, channel mapping and freezing. Never imports mlflow."""
