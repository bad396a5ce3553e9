"""The machine a benchmark ran on, in one line: every speed figure names its CPU.

``model name`` alone can say only "AMD EPYC", which covers both the Zen 1 machines (AVX2, no
AVX512) and the Zen 4 ones (AVX512-BF16), 3x apart on the same code; the family, model and the
vector flags that decide the speed tell them apart.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""The ``/proc/cpuinfo`` flags that set a CPU's matmul speed, in the order shown."""


def cpu_fields(cpuinfo: str) -> dict[str, str]:
    """The first processor's ``key: value`` fields of a ``/proc/cpuinfo`` text.

    Example:
        >>> cpu_fields("model name\\t: AMD EPYC\\ncpu family\\t: 23\\n\\nmodel name\\t: other\\n")
        {'model name': 'AMD EPYC', 'cpu family': '23'}
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def describe(fields: dict[str, str], cores: int | None) -> str:
    """One line: model name, family/model, the speed flags it has, the cores.

    Example:
        >>> describe({"model name": "AMD EPYC", "cpu family": "23", "model": "1",
        ...           "flags": "fpu avx2 sse"}, 2)
        'AMD EPYC (family 23 model 1; avx2; 2 cores)'
    """
    flags = set(fields.get("flags", "").split())
    name = fields.get("model name") or platform.processor() or platform.machine()
    have = [f for f in SPEED_FLAGS if f in flags] or ["no avx2"]
    kind = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return f"{name} ({kind}; {', '.join(have)}; {cores} cores)"


def cpu_label() -> str:
    """This machine's CPU in one line (:func:`describe` of ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    return describe(cpu_fields(text), os.cpu_count())


def accelerator_label() -> str:
    """The GPU that ``ar2`` trains on here (``pick_device``: the first CUDA device), with the
    torch build, or ``"none"`` on a machine without one.

    Example:
        >>> isinstance(accelerator_label(), str)
        True
    """
    try:
        from ar2.encoders._runtime import pick_device

        if pick_device() != "cuda":
            return "none"
    except ImportError:  # no torch: no GPU that ar2 could use
        return "none"
    import torch

    return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
