"""Compile the Triton kernels for NVIDIA GPUs on a machine without one (run as a script).

Triton's front end and the LLVM and ptxas stages it ships need no GPU, so the kernels are
built here all the way to a cubin for each target and variant named below; a kernel that
the interpreter runs but a GPU compiler refuses (a loop-carried value changing type, an
unsupported construct) fails here, and so does one whose registers spill to local memory.
Prints one line per build and exits non-zero on the first failure. TRITON_INTERPRET must
be unset, so that the kernel is a compilable JITFunction.
"""

from __future__ import annotations

import os
import sys

import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler import compile as compile_kernel

from crossentropy.losses import _triton

FLAGS = ("PROBS", "HAS_WEIGHT", "SMOOTH", "ZLOSS", "SOFTCAP", "GRAD", "ENTROPY")
# (logits dtype, accumulation dtype, flags set): the language model's case, every option
# with probability targets, float64 with every option, a bare forward pass in float16.
VARIANTS = [
    ("bf16", "fp32", {"GRAD"}),
    ("bf16", "fp32", {"HAS_WEIGHT", "SMOOTH", "ZLOSS", "SOFTCAP", "GRAD", "ENTROPY"}),
    ("fp32", "fp32", set(FLAGS)),
    ("fp64", "fp64", set(FLAGS) - {"PROBS"}),
    ("fp16", "fp32", {"PROBS"}),
]
TARGETS = [("cuda", 90), ("cuda", 80)]
SHARD_FLAGS = ("PROBS", "HAS_WEIGHT", "SMOOTH", "SOFTCAP", "STATS")
# The vocabulary-parallel kernel: each pass, with every option, for both target kinds.
SHARD_VARIANTS = [
    ("bf16", "fp32", {"HAS_WEIGHT", "SMOOTH", "SOFTCAP", "STATS"}),
    ("bf16", "fp32", {"HAS_WEIGHT", "SMOOTH", "SOFTCAP"}),
    ("fp32", "fp32", set(SHARD_FLAGS)),
    ("fp32", "fp32", set(SHARD_FLAGS) - {"STATS"}),
]


def _leading(logits: str, acc: str, flags: set[str]) -> dict[str, str]:
    """The types of the arguments both kernels take first (see ``_triton._leading``)."""
    return {
        "x_ptr": f"*{logits}",
        "x_stride": "i32",
        "y_ptr": f"*{logits}" if "PROBS" in flags else "*i64",
        "t_stride": "i32",
        "w_ptr": f"*{acc}",
        "params_ptr": f"*{acc}",
    }


def build_shard(logits: str, acc: str, flags: set[str], arch: tuple[str, int]) -> list[str]:
    signature = {
        **_leading(logits, acc, flags),
        "max_ptr": f"*{acc}",
        "sums_ptr": f"*{acc}",
        "lse_ptr": f"*{acc}",
        "p_coef_ptr": f"*{acc}",
        "t_coef_ptr": f"*{acc}",
        "s_coef_ptr": f"*{acc}",
        "g_ptr": f"*{logits}",
        "g_stride": "i32",
        "num_rows": "i32",
        "shard": "i32",
        "vocab_start": "i32",
        "ignore_index": "i32",
    }
    return _compile(_triton._shard_kernel, signature, SHARD_FLAGS, acc, flags, arch, 64128)


def build(logits: str, acc: str, flags: set[str], arch: tuple[str, int]) -> list[str]:
    signature = {
        **_leading(logits, acc, flags),
        "scale_ptr": f"*{acc}",
        "g_ptr": f"*{logits}",
        "g_stride": "i32",
        "loss_ptr": f"*{acc}",
        "lse_ptr": f"*{acc}",
        "entropy_ptr": f"*{acc}",
        "num_classes": "i32",
    }
    return _compile(_triton._rows_kernel, signature, FLAGS, acc, flags, arch, 128256)


def _compile(kernel, signature, all_flags, acc, flags, arch, num_classes) -> list[str]:
    block, warps = _triton._block(num_classes)
    constexprs = {"ACC": tl.float64 if acc == "fp64" else tl.float32, "BLOCK": block}
    constexprs.update({flag: flag in flags for flag in all_flags})
    names = [*signature, "ACC", *all_flags, "BLOCK"]
    signature.update(dict.fromkeys(constexprs, "constexpr"))
    source = ASTSource(
        fn=kernel,
        signature={name: signature[name] for name in names},
        constexprs={(names.index(name),): value for name, value in constexprs.items()},
    )
    compiled = compile_kernel(
        source,
        target=GPUTarget(arch[0], arch[1], 32),
        options={"num_warps": warps, "enable_fp_fusion": False},
    )
    stages = sorted(compiled.asm)
    if any(".local" in line for line in compiled.asm["ptx"].splitlines()):
        stages.append("SPILLS")  # registers spilled to local memory: a slow kernel
    return stages


def main() -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET to compile", file=sys.stderr)
        return 2
    for arch in TARGETS:
        for logits, acc, flags in VARIANTS:
            stages = build(logits, acc, flags, arch)
            print(f"sm_{arch[1]} {logits} {sorted(flags)}: {', '.join(stages)}")
            if "cubin" not in stages or "SPILLS" in stages:
                return 1
        for logits, acc, flags in SHARD_VARIANTS:
            stages = build_shard(logits, acc, flags, arch)
            print(f"sm_{arch[1]} shard {logits} {sorted(flags)}: {', '.join(stages)}")
            if "cubin" not in stages or "SPILLS" in stages:
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
