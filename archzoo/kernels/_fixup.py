"""Arrival counters for kernels whose last program finishes the work of the others (split-K's "fixup").

A kernel split over several programs (decode attention's splits of the cache length, the decode GEMV's splits of
K) used to need a second launch to merge their partials. With a fixup each program stores its partial, then
takes a ticket from its group's counter (``tl.atomic_add`` with ``sem="acq_rel"``, GPU scope: its stores are
visible before the ticket, and the loads after it see every earlier program's); the program that draws the last
ticket merges the group's partials, reading them through L2, and sets the counter back to zero. At decode sizes
a step is launch-bound (docs/decode.md), and the merge's own launch cost more than its work.

The counters live here, one int32 buffer per device kept between calls: every call leaves them zero, so one
buffer serves every kernel and every replay of a captured step, provided the calls on a device run one after
another (one stream: a decode step). The first call of a size allocates; the decode engine makes it in its
warm-up, before capture.
"""

from __future__ import annotations

import torch

COUNTERS: dict[torch.device, torch.Tensor] = {}


def counters(device: torch.device, n: int) -> torch.Tensor:
    """At least n int32 zeros on ``device``, the same buffer on every call (grown, never shrunk)."""
    c = COUNTERS.get(device)
    if c is None or c.numel() < n:
        c = COUNTERS[device] = torch.zeros(max(n, 1024), device=device, dtype=torch.int32)
    return c
