"""Hardware targets (installed as cimc.targets)."""
