"""Fleets: one manifest, every device class built (once per distinct build), signed, exported for OTA."""
