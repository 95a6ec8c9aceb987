"""TGAT's functional time encoding (Xu et al., ICLR 2020): a time gap becomes a vector
``cos(w * dt + phi)`` whose learnable frequencies span several orders of magnitude, so
attention can tell a minute-old interaction from a month-old one.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEncoding(nn.Module):
    r"""Encodes time gaps ``dt`` (seconds) as :math:`\cos(w \cdot dt + \varphi)`.

    Args:
        dim: ``d_t``, size of the encoding (default: ``16``).
        max_exponent: frequencies are initialised to
            :math:`w_i = 10^{-\mathrm{linspace}(0, \text{max\_exponent}, d_t)_i}` rad/s, i.e.
            periods from ~6 s to ~200 years for the default ``9.0``.
        learnable: whether ``w`` and ``phi`` are trained (default: ``True``).

    ``forward(dt)`` maps any ``[*]`` tensor of gaps to ``[*, d_t]`` (float32); ``dt = 0``
    gives ``cos(phi)`` (all ones at initialisation).

    >>> enc = TimeEncoding(4)
    >>> enc(torch.zeros(2, 3)).shape
    torch.Size([2, 3, 4])
    >>> enc(torch.tensor([0.0])).tolist()
    [[1.0, 1.0, 1.0, 1.0]]
    >>> enc
    TimeEncoding(dim=4, max_exponent=9.0, learnable=True)
    """

    def __init__(self, dim: int = 16, max_exponent: float = 9.0, learnable: bool = True) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.max_exponent, self.learnable = dim, max_exponent, learnable
        self.w = nn.Parameter(torch.empty(dim), requires_grad=learnable)
        self.phi = nn.Parameter(torch.empty(dim), requires_grad=learnable)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Frequencies log-spaced over ``max_exponent`` decades, phases zero (deterministic)."""
        with torch.no_grad():
            exponents = torch.linspace(0.0, self.max_exponent, self.dim, dtype=torch.float64)
            self.w.copy_((10.0 ** -exponents).float())
            self.phi.zero_()

    def forward(self, dt: torch.Tensor) -> torch.Tensor:
        # The product and its reduction mod 2*pi are taken in float64: in float32 a phase of
        # a month-old gap at 1 rad/s would keep no digits below the period.
        phase = dt.to(torch.float64).unsqueeze(-1) * self.w.to(torch.float64)
        return torch.cos(torch.remainder(phase, 2 * math.pi).to(self.w.dtype) + self.phi)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dim={self.dim}, max_exponent={self.max_exponent}, "
                f"learnable={self.learnable})")
