"""Measured evidence that decides ``fit.backend: auto`` (see :func:`brainalign.ridge.backend.auto_choice`).

``auto`` runs the ridge engine on a GPU only where a record below says that backend was MEASURED
faster than numpy on that GPU model. Each record comes from one run of ``bench/gpu_check.py`` on
that GPU (its report prints the record to paste here, from its own timings):

    {"backend": "cupy" | "torch-cuda",
     "gpu": the device name as CUDA reports it (e.g. "NVIDIA H200"),
     "speedup": numpy wall time / backend wall time on the script's streamed nested-CV case,
     "date": "YYYY-MM-DD", "source": "bench/gpu_check.py report, <commit>"}

No GPU run has been made yet (no accelerator was available when the GPU paths were written), so the
list is empty and ``auto`` stays on numpy everywhere. Never add a record that was not measured.
"""

MEASURED: tuple = ()
