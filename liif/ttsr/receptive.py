"""TTSR's receptive radius, derived from the architecture (pure math, no torch).

With the reference held fixed, a TTSR output pixel of LR block ``r`` depends only on LR pixels
within ``radius`` of ``r``: tiles that read that halo and crop it off equal the whole image.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["SCALE", "ttsr_output_reach", "ttsr_receptive_radius"]

SCALE = 4  # TTSR is a fixed x4 model


def _bicubic_reach(pixel: Fraction, factor: int) -> Fraction:
    """Extra reach (output-pixel units) of a bicubic upsampling by ``factor`` from a grid of
    ``pixel``-sized pixels (``align_corners=False``, 4 taps ``floor(u)-1 .. floor(u)+2``): the
    largest distance, over output phases, from an output pixel's extent to its taps' extent."""
    best = Fraction(0)
    for j in range(factor):
        u = Fraction(2 * j + 1, 2 * factor) - Fraction(1, 2)
        first = math.floor(u) - 1
        left = j * pixel / factor - first * pixel
        right = (first + 4) * pixel - (j + 1) * pixel / factor
        best = max(best, left, right)
    return best


def ttsr_output_reach(num_res_blocks: tuple[int, int, int, int]) -> Fraction:
    """Reach ``A`` of a TTSR output pixel, in output pixels (a quarter of an LR pixel).

    Every feature pixel covers an interval of the output grid (``P`` output pixels wide: 4 at
    x1, 2 at x2, 1 at x4); a feature "has reach A" when it depends only on LR pixels whose
    output-grid extent meets its own extent widened by ``A`` on both sides. Rules: 3x3 conv
    ``+P``; 1x1 conv, ReLU, 2x2 max-pool ``+0``; stride-2 3x3 conv ``+P_in``; pixel shuffle x2
    ``+P_in/2``; bicubic x``f`` upsampling :func:`_bicubic_reach`; 3x3 patch unfold/fold at x1
    ``+4``; a sum, product or concatenation takes the max of its inputs. The reference is
    held fixed (it enters only through K and V). Follows ``TTSR.forward`` and ``MainNet``.
    """
    n0, n1, n2, n3 = (int(n) for n in num_res_blocks)
    p1, p2, p4 = Fraction(4), Fraction(2), Fraction(1)  # pixel sizes of the x1, x2, x4 branches

    def conv(a: Fraction, p: Fraction) -> Fraction:
        return a + p

    def blocks(a: Fraction, n: int, p: Fraction) -> Fraction:
        return a + 2 * n * p  # ResBlock: two 3x3 convs

    # Q: LTE level 3 of bicubic-x4 LR: conv0, conv2 at x4; pool; conv5, conv7 at x2; pool; conv10
    q = _bicubic_reach(p1, 4) + 2 * p4 + 2 * p2 + p1
    s = q + p1  # soft/hard attention: 3x3 patches of Q
    t3 = s + p1  # transfer: overlap-add of the 3x3 patches at the neighbouring indices
    t2 = t3 + (p1 - p2)  # the same block pattern at finer pixels (pixel-unshuffled transfer)
    t1 = t3 + (p1 - p4)
    s2, s4 = s + _bicubic_reach(p1, 2), s + _bicubic_reach(p1, 4)

    x11 = conv(blocks(conv(Fraction(0), p1), n0, p1), p1)  # SFE
    x11 = max(x11, conv(max(x11, t3), p1), s)  # x + conv11_head(cat(x, T3)) * S
    x11 = max(x11, conv(blocks(x11, n1, p1), p1))
    x21 = x11
    x22 = conv(x11, p1) + p1 / 2  # conv12, pixel shuffle
    x22 = max(x22, conv(max(x22, t2), p2), s2)
    # CSFI2
    r21 = conv(max(x21, x22 + p2), p1)  # conv21 (stride 2) then conv_merge1
    r22 = conv(max(x22, x21 + _bicubic_reach(p1, 2)), p2)
    x21 = max(x21, conv(blocks(r21, n2, p1), p1))
    x22 = max(x22, conv(blocks(r22, n2, p2), p2))
    x31, x32 = x21, x22
    x33 = conv(x22, p2) + p2 / 2  # conv23, pixel shuffle
    x33 = max(x33, conv(max(x33, t1), p4), s4)
    # CSFI3
    r31 = conv(max(x31, x32 + p2, x33 + p4 + p2), p1)
    r32 = conv(max(x32, x31 + _bicubic_reach(p1, 2), x33 + p4), p2)
    r33 = conv(max(x33, x31 + _bicubic_reach(p1, 4), x32 + _bicubic_reach(p2, 2)), p4)
    x31 = max(x31, conv(blocks(r31, n3, p1), p1))
    x32 = max(x32, conv(blocks(r32, n3, p2), p2))
    x33 = max(x33, conv(blocks(r33, n3, p4), p4))
    # merge tail: conv_merge, conv_tail1 (3x3), conv_tail2 (1x1)
    merged = max(x33, x31 + _bicubic_reach(p1, 4), x32 + _bicubic_reach(p2, 2))
    return conv(conv(merged, p4), p4)


def ttsr_receptive_radius(num_res_blocks: tuple[int, int, int, int]) -> int:
    """Receptive radius of TTSR in LR pixels (reference fixed): an output pixel of LR block
    ``r`` depends only on LR pixels ``r - radius .. r + radius``. ``ceil(A / 4)`` with ``A``
    from :func:`ttsr_output_reach`. ``(1, 1, 1, 1)`` -> 24, the paper's ``(16, 16, 8, 4)`` -> 102.
    """
    if len(num_res_blocks) != 4 or any(int(n) < 0 for n in num_res_blocks):
        raise ValueError(f"num_res_blocks must be 4 non-negative ints, got {num_res_blocks!r}")
    return math.ceil(ttsr_output_reach(num_res_blocks) / SCALE)
