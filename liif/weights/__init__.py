"""Bundled weights (``*.safetensors``) and the code that re-creates them (:mod:`liif.weights.official`)."""

# Data and a maintenance script: the package itself exports no names.
__all__: list[str] = []
