"""Reference scales of the divergence criterion and the landscape law.

Power laws are written as ``c (N/N_0)^a (D/D_0)^b (B/B_0)^k`` so that the constant ``c``
is the value at a typical mid-size run rather than at N = D = B = 1.
"""

from __future__ import annotations

N0 = 3e8
"""Reference model size, parameters."""
D0 = 2e10
"""Reference data size, training tokens."""
B0 = 256.0
"""Reference batch size, sequences per optimizer step."""
