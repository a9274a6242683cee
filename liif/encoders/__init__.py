"""Encoders: image -> latent grid. Each exposes ``out_dim`` and ``receptive_radius`` (LR px)."""

from liif.encoders.edsr import EDSR, make_edsr, make_edsr_baseline
from liif.encoders.rdn import RDN, make_rdn
from liif.registry import Registry

ENCODERS = Registry("encoder")
ENCODERS.register("edsr-baseline", make_edsr_baseline)
ENCODERS.register("edsr", make_edsr)
ENCODERS.register("rdn", make_rdn)

__all__ = ["ENCODERS", "EDSR", "RDN", "make_edsr", "make_edsr_baseline", "make_rdn"]
