"""The SASS hot-loop report and H100 roofline model (a thin wrapper of ``python -m tritonsparse.sass``).

    python benchmarks/kernel_report.py fwd --in 3072 --out 768 --K 307 --batch 256 --dtype fp32
    python benchmarks/kernel_report.py --cases issue8 --csv benchmarks/results/kernel_report_h100_sm90.csv
    python benchmarks/kernel_report.py --readme-table benchmarks/results/kernel_report_h100_sm90.csv

No GPU needed: kernels are compiled for sm_90 with the runtime's specialization and
read as SASS; every time it prints is **modeled** (see ``tritonsparse/sass/model.py``).
Run with ``TRITON_INTERPRET`` unset.
"""
import sys

from tritonsparse.sass.report import main

if __name__ == "__main__":
    sys.exit(main())
