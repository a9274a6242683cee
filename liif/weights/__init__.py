"""Bundled weights (``*.safetensors``) and the code that re-creates them (:mod:`liif.weights.official`)."""
