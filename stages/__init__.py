"""DVC stage entry points: one module per stage of dvc.yaml."""
