"""``varicodec serve``: a local web page comparing our codec with JPEG, WebP and AVIF.

One image, one target (a quality for our model, a bpp target, or "the size of
JPEG at quality q"); our model codes it (rate control gives the size), each
classical codec is searched over its quality setting for the file closest in
size, and the page shows the four decoded images side by side with real file
sizes, PSNR, MS-SSIM and timings.

* :mod:`.compare` — the comparison itself (no web code): size matching, metrics,
  the gating report (per-layer sparsity, FLOPs saved);
* :mod:`.jobs` — worker threads (one model copy each) and a bounded job store
  with progress;
* :mod:`.app` — the Starlette application (upload limits, JSON API, static page);
* :mod:`.cli` — the ``serve`` subcommand (uvicorn on 127.0.0.1 by default).

The web stack (Starlette, uvicorn, python-multipart) is the optional extra
``varicodec[serve]``; nothing here imports it until the command runs.
"""
