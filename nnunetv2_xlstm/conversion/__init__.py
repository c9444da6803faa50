"""Converters from public data layouts to nnU-Net's raw format."""
