"""Evaluation: rate–distortion–complexity measurements, classical codecs, plots, tables.

* :mod:`.runner` — run our models (any λ, or a set of fixed-rate checkpoints)
  and classical codecs over an image folder; real file sizes, PSNR, MS-SSIM,
  wall-clock time, FLOPs and gate sparsity per image and rate point.
* :mod:`.classical` — JPEG, WebP, AVIF, JPEG 2000 and JPEG XL through Pillow
  and imagecodecs.
* :mod:`.results` — the JSON results schema, environment record, load / save.
* :mod:`.reference` — CompressAI's published Kodak curves.
* :mod:`.plot`, :mod:`.table` — figures and the paper's tables from results files.
* :mod:`.cli` — ``varicodec eval``, ``varicodec plot``, ``varicodec table``.
"""
