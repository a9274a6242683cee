"""TTSR: texture transformer for reference-based x4 super-resolution (Yang et al., CVPR 2020).

Pure PyTorch; key-compatible with the official ``TTSR-rec.pt`` / ``TTSR.pt``::

    sd = torch.load("TTSR-rec.pt", weights_only=True)
    model = load_official_ttsr(sd)
    sr = reference_upscale(model, lr, ref)       # (3, h, w), (3, Hr, Wr) in [0, 1] -> (3, 4h, 4w)
"""

from liif.ttsr.checkpoint import build_ttsr, is_official_ttsr_state_dict, load_official_ttsr
from liif.ttsr.data import ref_batch
from liif.ttsr.infer import reference_upscale
from liif.ttsr.model import TTSR, TTSROutput
from liif.ttsr.search import SearchResult, search_chunked, search_full, transfer
from liif.ttsr.train import TTSRLossWeights, make_ttsr_optimizers, ttsr_train_step

__all__ = [
    "TTSR", "SearchResult", "TTSRLossWeights", "TTSROutput", "build_ttsr",
    "is_official_ttsr_state_dict", "load_official_ttsr", "make_ttsr_optimizers", "ref_batch",
    "reference_upscale", "search_chunked", "search_full", "transfer", "ttsr_train_step",
]
