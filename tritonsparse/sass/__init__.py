"""SASS hot-loop report and roofline model of the tritonsparse kernels (no GPU needed).

``compile``: build a kernel for sm_80/sm_90 with the runtime's specialization;
``problems``: the launches the library makes for a named problem; ``parse``: nvdisasm
parsing, loops and instruction classes; ``model``: the H100/A100 roofline;
``report``: the command line (``python -m tritonsparse.sass``).
"""
