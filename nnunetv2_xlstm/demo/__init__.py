"""The embedded default: synthetic whole-heart phantoms and the end-to-end demo on them."""
