"""Read ``nvdisasm -c`` output: instructions, loops (backward branches), instruction
classes and per-loop counts.

Counts are of **warp instructions** in the static code of one loop iteration (the SASS
is exact for the binary; a predicated-off instruction still takes its issue slot).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:(@!?U?P\w+)\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+|\.L_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+|\.L_\d+)\)")

# classes, in the order the report prints them
CLASSES = ("ffma", "hfma2", "hmma", "hgmma", "fp32", "fp16", "mufu", "cvt", "int", "uniform", "ldg", "stg",
           "lds", "sts", "ldsm", "ldgsts", "tma", "atom", "shfl", "bar", "sync", "spill", "control", "other")

_INT_OPS = {"IMAD", "IADD3", "IADD", "LEA", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "SEL", "MOV", "PRMT",
            "IABS", "IMNMX", "VIMNMX", "BMSK", "BREV", "FLO", "POPC", "P2R", "R2P", "PLOP3", "S2R", "S2UR", "CS2R",
            "LDC", "IDP", "IMUL", "ISCADD", "VIADD", "VIADDMNMX", "SGXT", "IMNMX3", "I2IP", "LEPC"}
_FP32_OPS = {"FADD", "FMUL", "FSEL", "FSETP", "FMNMX", "FCHK", "FSET", "FSWZADD", "FMNMX3", "FADD2", "FMUL2"}
_FP16_OPS = {"HADD2", "HMUL2", "HSETP2", "HMNMX2", "HSET2"}
_CVT_OPS = {"F2F", "I2F", "F2I", "F2FP", "I2FP", "FRND", "I2I"}
_CONTROL = {"BRA", "BSSY", "BSYNC", "EXIT", "RET", "CALL", "BPT", "WARPSYNC", "YIELD", "JMP", "BRX", "BREAK",
            "KILL", "NANOSLEEP", "ACQBULK", "ELECT", "PREEXIT", "ENDCOLLECTIVE"}


@dataclass
class Instr:
    """One SASS instruction: address, guard predicate, opcode with modifiers, operands."""

    addr: int
    pred: str
    opcode: str  # full, e.g. "LDG.E.128.CONSTANT"
    operands: str

    @property
    def op(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def mods(self) -> list[str]:
        return self.opcode.split(".")[1:]

    @property
    def cls(self) -> str:
        return classify(self)

    def target(self) -> str | None:
        m = _TARGET.search(self.operands)
        return m.group(1) if m else None


@dataclass
class Loop:
    """A loop: the body from ``start`` (a label's address) to the backward branch at ``end``."""

    start: int
    end: int
    body: list[Instr] = field(repr=False)
    depth: int = 0  # loops strictly enclosing this one

    def __len__(self):
        return len(self.body)

    def contains(self, other: "Loop") -> bool:
        return self.start <= other.start and other.end <= self.end and (self.start, self.end) != (other.start, other.end)


def classify(ins: Instr) -> str:
    """The instruction class of one instruction (see ``CLASSES``)."""
    op, mods = ins.op, ins.mods
    if op == "FFMA" or op == "FFMA2":
        return "ffma"
    if op == "HFMA2":
        return "hfma2"
    if op == "HMMA" or op == "IMMA" or op == "DMMA":
        return "hmma"
    if op in ("HGMMA", "IGMMA", "WGMMA", "QGMMA", "BGMMA"):
        return "hgmma"
    if op in _FP32_OPS:
        return "fp32"
    if op in _FP16_OPS:
        return "fp16"
    if op == "MUFU":
        return "mufu"
    if op in _CVT_OPS:
        return "cvt"
    if op in ("LDG", "LD"):
        return "ldg"
    if op in ("STG", "ST", "RED", "REDG"):
        return "stg"
    if op == "LDS":
        return "lds"
    if op == "STS":
        return "sts"
    if op in ("LDSM", "STSM"):
        return "ldsm"
    if op == "LDGSTS":
        return "ldgsts"
    if op.startswith("UTMA") or op in ("UBLKCP", "UTMALDG", "UTMASTG"):
        return "tma"
    if op in ("ATOM", "ATOMG", "ATOMS", "REDS"):
        return "atom"
    if op == "SHFL":
        return "shfl"
    if op == "BAR":
        return "bar"
    if op in ("SYNCS", "WARPGROUP", "DEPBAR", "MEMBAR", "ERRBAR", "FENCE", "CCTL", "LDGDEPBAR", "ARRIVES",
              "WARPGROUPSET", "UCGABAR_ARV", "UCGABAR_WAIT"):
        return "sync"
    if op in ("LDL", "STL"):
        return "spill"
    if op in _CONTROL:
        return "control"
    if op.startswith("U") and op not in ("UTMALDG",):
        return "uniform"
    if op in _INT_OPS or op.startswith("ISETP") or op.startswith("LOP"):
        return "int"
    if op == "NOP":
        return "nop"
    return "other"


def load_width_bits(ins: Instr) -> int:
    """Bits per thread of a global/shared load or store (``.128``, ``.64``, ``.U16`` ...; 32 by default)."""
    widths = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8, "32": 32}
    for m in ins.mods:
        if m in widths:
            return widths[m]
    return 32


def parse(sass: str) -> tuple[list[Instr], dict[str, int]]:
    """Instructions (in address order) and label addresses of ``nvdisasm -c`` text of one kernel."""
    if not isinstance(sass, str):
        raise TypeError(f"sass must be str, got {type(sass).__name__}")
    instrs, labels, pending = [], {}, []
    for line in sass.splitlines():
        lm = _LABEL.match(line)
        if lm:
            pending.append(lm.group(1))
            continue
        m = _LINE.match(line)
        if not m:
            continue
        ins = Instr(int(m.group(1), 16), m.group(2) or "", m.group(3), m.group(4))
        for lab in pending:
            labels[lab] = ins.addr
        pending = []
        instrs.append(ins)
    if not instrs:
        raise ValueError("no SASS instructions found (expected `nvdisasm -c` output)")
    return instrs, labels


def find_loops(instrs: list[Instr], labels: dict[str, int]) -> list[Loop]:
    """Loops from backward branches (target address <= branch address), innermost first."""
    by_addr = {ins.addr: i for i, ins in enumerate(instrs)}
    loops = []
    for i, ins in enumerate(instrs):
        if ins.op not in ("BRA", "JMP"):
            continue
        tgt = ins.target()
        if tgt is None or tgt not in labels:
            continue
        start = labels[tgt]
        if start == ins.addr:
            continue  # `BRA self`: the trap after EXIT, not a loop
        if start < ins.addr and start in by_addr:
            loops.append(Loop(start, ins.addr, instrs[by_addr[start]: i + 1]))
    # merge several back edges to one header (continue-like branches): keep the outermost extent
    merged: dict[int, Loop] = {}
    for lp in loops:
        if lp.start not in merged or lp.end > merged[lp.start].end:
            merged[lp.start] = lp
    loops = list(merged.values())
    for lp in loops:
        lp.depth = sum(1 for other in loops if other.contains(lp))
    loops.sort(key=lambda lp: (-lp.depth, lp.start))
    return loops


def fma_lanes(ins: Instr) -> int:
    """Multiply-adds one warp instruction does (all lanes): FFMA 32, HFMA2 64, HMMA
    m*n*k, HGMMA (issued by each of the 4 warps of a warpgroup) 64*N*K/4; 0 otherwise."""
    c = ins.cls
    if c == "ffma":
        return 64 if ins.op == "FFMA2" else 32
    if c == "hfma2":
        return 64
    if c == "hmma":
        m = re.match(r"(\d)(\d)(\d+)", ins.mods[0]) if ins.mods else None
        if m:  # e.g. 16816 -> m16 n8 k16, 1688 -> m16 n8 k8
            s = ins.mods[0]
            mm, nn, kk = int(s[:2]), int(s[2]), int(s[3:])
            return mm * nn * kk
        return 16 * 8 * 8
    if c == "hgmma":
        m = re.match(r"64x(\d+)x(\d+)", ins.mods[0]) if ins.mods else None
        if m:
            return 64 * int(m.group(1)) * int(m.group(2)) // 4
        return 0
    return 0


def count(body: list[Instr]) -> dict:
    """Per-class counts of warp instructions, global loads by width, and useful lanes.

    Keys: every class of ``CLASSES``; ``total`` (issued warp instructions, NOPs excluded);
    ``ldg128``/``ldg64``/``ldg32``/``ldg16``/``ldg8``; ``ldg_bytes`` and ``lds_bytes``/``sts_bytes``
    (bytes per warp instruction, all lanes); ``fma_lanes`` (multiply-adds per warp)."""
    c = Counter()
    for ins in body:
        k = ins.cls
        if k == "nop":
            continue
        c[k] += 1
        c["total"] += 1
        if k == "ldg":
            w = load_width_bits(ins)
            c[f"ldg{w}"] += 1
            c["ldg_bytes"] += w // 8 * 32
        elif k == "stg":
            c["stg_bytes"] += load_width_bits(ins) // 8 * 32
        elif k == "lds":
            c["lds_bytes"] += load_width_bits(ins) // 8 * 32
        elif k == "sts":
            c["sts_bytes"] += load_width_bits(ins) // 8 * 32
        elif k == "ldgsts":
            c["ldg_bytes"] += load_width_bits(ins) // 8 * 32
            c[f"ldg{load_width_bits(ins)}"] += 1
        c["fma_lanes"] += fma_lanes(ins)
        if ins.op == "FMUL":
            c["fmul_lanes"] += 32
        elif ins.op == "HMUL2":
            c["fmul_lanes"] += 64
    out = {k: 0 for k in CLASSES}
    out.update({k: 0 for k in ("total", "ldg128", "ldg64", "ldg32", "ldg16", "ldg8", "ldg_bytes", "stg_bytes",
                               "lds_bytes", "sts_bytes", "fma_lanes", "fmul_lanes")})
    out.update(c)
    return out


def hot_loop(loops: list[Loop]) -> Loop | None:
    """The loop the kernel spends its time in: among the innermost loops (none nested
    inside), the one with the most multiply-add lanes, then the longest body."""
    if not loops:
        return None
    inner = [lp for lp in loops if not any(lp.contains(o) for o in loops)]
    def work(lp):
        c = count(lp.body)
        return (c["fma_lanes"] + c["fmul_lanes"], len(lp.body))

    return max(inner, key=work)


@dataclass
class SassSummary:
    """A kernel's SASS read once: all instructions, its loops and the hot loop's counts."""

    instrs: list[Instr]
    loops: list[Loop]
    hot: Loop | None
    loop_counts: dict  # counts of the hot loop's body (empty dict when there is no loop)
    kernel_counts: dict  # counts of the whole kernel (static)

    @property
    def outside_hot(self) -> int:
        """Static warp instructions outside the hot loop."""
        return self.kernel_counts["total"] - self.loop_counts.get("total", 0)


def summarize(sass: str) -> SassSummary:
    """Parse ``sass`` and count its hot loop (see :func:`hot_loop`)."""
    instrs, labels = parse(sass)
    loops = find_loops(instrs, labels)
    hot = hot_loop(loops)
    return SassSummary(instrs, loops, hot, count(hot.body) if hot else {}, count(instrs))
