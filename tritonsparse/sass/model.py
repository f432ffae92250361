"""A roofline model of one kernel launch on an H100 SXM (or A100), from its SASS.

Everything this module returns is **modeled**, not measured: no GPU ran anything. The
instruction counts it starts from are exact for the compiled binary; the machine
constants are public figures or estimates (all in :class:`GPU`, one place, so a
calibration against published timings can refit them: issue 12).

Kernel time (one launch) is the largest of these terms, plus a fixed launch floor:

* **issue**: warp instructions on the busiest SM / (schedulers x clock);
* **pipes**: per pipe (FMA, ALU, conversions, MUFU, shuffles), its warp instructions /
  its rate; tensor-core FMAs / the tensor rate;
* **L1/LSU**: memory wavefronts (a warp load of w bytes takes max(1, w/128) cycles of the
  SM's 128 B/clk L1), shuffles and shared accesses included;
* **latency**: loop trips x (memory latency + one warp's instructions per trip) per wave
  of resident CTAs: a loop whose loads are not pipelined waits once per trip for its
  index -> gather chain (the term that rules when there are few CTAs per SM);
* **L2**: global-load bytes that miss L1 / L2 bandwidth (the L1 hit rate of a gathered
  operand is the fraction of its slice that fits in L1);
* **HBM**: compulsory bytes / HBM bandwidth.

Trips of the hot loop are not visible in the SASS; they are the op's useful multiply-adds
divided by the multiply-adds one CTA does per trip (so masked lanes are not charged:
the model is optimistic for ragged tiles and unequal CSR rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class GPU:
    """Machine constants of the model (all in one place; see the module doc)."""

    name: str
    sms: int
    clock_hz: float
    schedulers: int = 4  # warp instructions issued per clock per SM
    l1_bytes_per_clk: int = 128  # per SM
    l1_bytes: int = 256 * 1024  # L1 + shared per SM
    l2_bw: float = 5.5e12  # L2 -> SM, bytes/s
    l2_bytes: int = 50 * 1024 * 1024
    hbm_bw: float = 3.35e12  # bytes/s, peak
    hbm_efficiency: float = 0.9  # fraction of peak a streaming kernel reaches
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32
    smem_per_sm: int = 228 * 1024
    # pipe rates in warp instructions per clock per SM
    rate_fma: float = 4.0  # FFMA, FADD/FMUL, HFMA2
    rate_alu: float = 2.0  # integer and address arithmetic, moves, predicates
    rate_cvt: float = 0.5
    rate_mufu: float = 0.5
    rate_shfl: float = 1.0
    tensor_fma_per_clk: dict = field(default_factory=lambda: {"tf32": 512, "bf16": 1024, "fp16": 1024})
    hgmma_speedup: float = 2.0  # warpgroup MMA over warp-level HMMA
    # one trip's dependent memory chain: an index from the L1-resident stream (~35 cycles),
    # then the gather it addresses, an L2 hit (~270 cycles)
    mem_latency_cycles: float = 300.0
    launch_floor_s: float = 2e-6
    # dense cuBLAS at achieved rates (FLOP/s) for the "modeled dense" column
    dense_flops: dict = field(default_factory=lambda: {"fp32": 50e12, "tf32": 400e12, "bf16": 700e12,
                                                       "fp16": 700e12})

    @property
    def ffma_flops(self) -> float:
        """Peak FP32 FMA rate in FLOP/s (2 per FMA)."""
        return self.sms * self.rate_fma * 32 * 2 * self.clock_hz

    @property
    def l1_bw(self) -> float:
        """All SMs' L1 bandwidth, bytes/s."""
        return self.sms * self.l1_bytes_per_clk * self.clock_hz


H100_SXM = GPU("H100 SXM", sms=132, clock_hz=1.98e9)
A100_SXM = GPU("A100 SXM", sms=108, clock_hz=1.41e9, l1_bytes=192 * 1024, l2_bw=4.0e12, l2_bytes=40 * 1024 * 1024,
               hbm_bw=2.0e12,
               smem_per_sm=164 * 1024, tensor_fma_per_clk={"tf32": 512, "bf16": 1024, "fp16": 1024},
               hgmma_speedup=1.0, dense_flops={"fp32": 17e12, "tf32": 120e12, "bf16": 230e12, "fp16": 230e12})
GPUS = {"h100": H100_SXM, "a100": A100_SXM}
_ELEM = {"fp32": 4, "bf16": 2, "fp16": 2, "int16": 2, "int32": 4, "int64": 8}


def occupancy(gpu: GPU, regs: int, warps: int, shared: int) -> int:
    """Resident CTAs per SM, limited by registers (allocated per warp in 256-register
    units), threads, shared memory and the CTA limit."""
    if warps < 1:
        raise ValueError(f"warps must be >= 1, got {warps}")
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = gpu.regs_per_sm // (regs_per_warp * warps)
    by_threads = gpu.max_threads_per_sm // (32 * warps)
    by_smem = gpu.smem_per_sm // shared if shared > 0 else gpu.max_ctas_per_sm
    return max(0, min(by_regs, by_threads, by_smem, gpu.max_ctas_per_sm))


def _tensor_dtype(ins_opcode: str) -> str:
    up = ins_opcode.upper()
    if "TF32" in up:
        return "tf32"
    if "BF16" in up:
        return "bf16"
    return "fp16"


@dataclass
class KernelTime:
    """Modeled time of one launch and its terms (seconds). ``bound`` names the largest term."""

    total: float
    terms: dict
    bound: str
    trips: int
    per_trip: int  # useful multiply-adds per CTA per trip
    ctas: int
    occupancy: int
    waves: int
    l1_hit: float


def work_per_trip(summary, warps: int, tile_fmas: int | None = None) -> int:
    """Useful multiply-adds one CTA does per trip of the hot loop: ``tile_fmas`` (the
    product of the tile the loop body covers, when the caller knows it) unless the SASS
    does at least twice as many (the compiler unrolled the loop); otherwise the loop's
    multiply-add lanes (FFMA, HFMA2, HMMA, HGMMA) x warps, or, in a loop without any,
    its plain multiplies (a product summed by a reduction tree). Lanes a layout
    replicates or a mask turns off are counted as useful: optimistic for such tiles."""
    loop = summary.loop_counts
    lanes = warps * loop.get("fma_lanes", 0)
    if tile_fmas:
        return lanes if lanes >= 2 * tile_fmas else int(tile_fmas)
    return lanes or warps * loop.get("fmul_lanes", 0)


def kernel_time(summary, *, regs: int, shared: int, warps: int, ctas: int, useful_fmas: int,
                hbm_bytes: float, gather_slice_bytes: float | None = None, tile_fmas: int | None = None,
                gpu: GPU = H100_SXM, trips: int | None = None) -> KernelTime:
    """Modeled time of one launch (see the module doc).

    summary: a :class:`tritonsparse.sass.parse.SassSummary`; regs/shared/warps: the
    binary's resources; ctas: the grid size; useful_fmas: multiply-adds this launch must
    do; hbm_bytes: its compulsory DRAM traffic; gather_slice_bytes: the bytes of the
    gathered operand one CTA's loads range over (None: loads stream, no L1 reuse);
    tile_fmas: useful multiply-adds per CTA per loop trip if known (see :func:`work_per_trip`);
    trips: trips of the hot loop per CTA when the caller knows them (a loop that is not
    over the multiply-adds, e.g. over rows; used by ``benchmarks/calibrate_model.py``)."""
    if trips is not None and (isinstance(trips, bool) or not isinstance(trips, int) or trips < 0):
        raise ValueError(f"trips must be a non-negative int or None, got {trips!r}")
    if ctas < 1:
        raise ValueError(f"ctas must be >= 1, got {ctas}")
    if warps < 1:
        raise ValueError(f"warps must be >= 1, got {warps}")
    occ = occupancy(gpu, regs, warps, shared)
    if occ == 0:
        return KernelTime(math.inf, {"occupancy": math.inf}, "does not fit on an SM", 0, 0, ctas, 0, 0, 0.0)
    loop = summary.loop_counts
    per_trip = work_per_trip(summary, warps, tile_fmas) if loop else 0
    if trips is not None:
        trips = trips if loop else 0
    elif per_trip > 0 and useful_fmas > 0:
        trips = max(1, math.ceil(useful_fmas / (ctas * per_trip)))
    else:
        trips = 1 if loop else 0
    ctas_per_sm = math.ceil(ctas / gpu.sms)
    waves = math.ceil(ctas_per_sm / occ)

    def dyn(key):  # warp instructions of one class per CTA (loop x trips + the rest once)
        return warps * (loop.get(key, 0) * trips + summary.kernel_counts.get(key, 0) - loop.get(key, 0))

    cyc = {}
    cyc["issue"] = ctas_per_sm * dyn("total") / gpu.schedulers
    cyc["fma pipe"] = ctas_per_sm * (dyn("ffma") + dyn("fp32") + dyn("hfma2") + dyn("fp16")) / gpu.rate_fma
    cyc["alu pipe"] = ctas_per_sm * (dyn("int")) / gpu.rate_alu
    cyc["cvt pipe"] = ctas_per_sm * dyn("cvt") / gpu.rate_cvt
    cyc["mufu pipe"] = ctas_per_sm * dyn("mufu") / gpu.rate_mufu
    wavefronts = sum(dyn(f"ldg{w}") * max(1, w * 32 // 8 // gpu.l1_bytes_per_clk) for w in (128, 64, 32, 16, 8))
    wavefronts += (dyn("lds_bytes") + dyn("sts_bytes")) / gpu.l1_bytes_per_clk + dyn("shfl") / gpu.rate_shfl
    wavefronts += dyn("stg_bytes") / gpu.l1_bytes_per_clk
    cyc["L1/LSU"] = ctas_per_sm * wavefronts
    tensor = 0.0
    if summary.hot is not None:
        for ins in summary.hot.body:
            if ins.cls in ("hmma", "hgmma"):
                from .parse import fma_lanes

                rate = gpu.tensor_fma_per_clk[_tensor_dtype(ins.opcode)] * (gpu.hgmma_speedup if ins.cls == "hgmma" else 1)
                tensor += fma_lanes(ins) / rate
    cyc["tensor pipe"] = ctas_per_sm * warps * tensor * trips
    if loop and loop.get("ldg", 0) + loop.get("ldgsts", 0) > 0:
        cyc["latency"] = waves * trips * (gpu.mem_latency_cycles + loop.get("total", 0))
    ldg_bytes_total = ctas * dyn("ldg_bytes")
    if gather_slice_bytes:
        resident = min(occ, ctas_per_sm)
        l1_free = max(gpu.l1_bytes - resident * shared, gpu.l1_bytes // 4)
        l1_hit = max(0.0, min(1.0, l1_free / float(gather_slice_bytes)))
        # the slice itself comes from L2 at least once per SM and batch tile
        l2_bytes = max(ldg_bytes_total * (1 - l1_hit), min(ldg_bytes_total, gather_slice_bytes * gpu.sms))
    else:
        l1_hit = 0.0
        l2_bytes = ldg_bytes_total
    sec = {k: v / gpu.clock_hz for k, v in cyc.items()}
    sec["L2"] = l2_bytes / gpu.l2_bw
    sec["HBM"] = hbm_bytes / (gpu.hbm_bw * gpu.hbm_efficiency)
    bound = max(sec, key=sec.get)
    return KernelTime(sec[bound] + gpu.launch_floor_s, sec, bound, trips, per_trip, ctas, occ, waves, l1_hit)


def dense_time(fmas: int, dtype: str, hbm_bytes: float, gpu: GPU = H100_SXM) -> float:
    """Modeled time of the dense cuBLAS GEMM: FLOPs at the achieved rate for ``dtype``
    (``fp32``, ``tf32``, ``bf16``, ``fp16``) or its bytes at HBM speed, plus the launch floor."""
    if dtype not in gpu.dense_flops:
        raise ValueError(f"dtype must be one of {sorted(gpu.dense_flops)}, got {dtype!r}")
    return max(2 * fmas / gpu.dense_flops[dtype], hbm_bytes / (gpu.hbm_bw * gpu.hbm_efficiency)) + gpu.launch_floor_s


def lower_bound(fmas: int, hbm_bytes: float, gather_bytes_per_fma: float, fma_flops: float | None = None,
                gpu: GPU = H100_SXM) -> tuple[float, str]:
    """Physical lower bound of a sparse op: the largest of its compulsory bytes at HBM peak,
    its FMAs at the FMA peak, and the gather floor (``gather_bytes_per_fma`` of L1 traffic
    per FMA at every SM's L1 bandwidth). Returns (seconds, which)."""
    terms = {
        "HBM bytes": hbm_bytes / gpu.hbm_bw,
        "FMA peak": 2 * fmas / (fma_flops or gpu.ffma_flops),
        "gather floor": fmas * gather_bytes_per_fma / gpu.l1_bw,
    }
    which = max(terms, key=terms.get)
    return terms[which], which


def torch_op_time(bytes_moved: float, gpu: GPU = H100_SXM, flops: float = 0.0, dtype: str = "fp32") -> float:
    """Modeled time of a PyTorch operator the launcher runs besides the kernels (a
    transpose, a pad, a sum of partials, a GEMM): its bytes at HBM speed or, for a matrix
    product, its FLOPs at the dense rate of ``dtype`` if that is longer; plus the launch
    floor. Operands that fit in L2 together move at L2 bandwidth. Sorts and selections are
    charged as memory-bound too (optimistic for them)."""
    bw = gpu.l2_bw if bytes_moved <= gpu.l2_bytes else gpu.hbm_bw * gpu.hbm_efficiency
    t = bytes_moved / bw
    if flops:
        t = max(t, flops / gpu.dense_flops[dtype if dtype in gpu.dense_flops else "fp32"])
    return t + gpu.launch_floor_s


def with_constants(gpu: GPU, **changes) -> GPU:
    """A copy of ``gpu`` with some constants changed (what a calibration fits)."""
    unknown = [k for k in changes if k not in gpu.__dataclass_fields__]
    if unknown:
        raise ValueError(f"GPU has no constant(s) {unknown}")
    return replace(gpu, **changes)


def elem_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (fp32, bf16, fp16, int16, int32, int64)."""
    if dtype not in _ELEM:
        raise ValueError(f"dtype must be one of {sorted(_ELEM)}, got {dtype!r}")
    return _ELEM[dtype]
