"""``varicodec serve``: the comparison page on a local web server (uvicorn)."""

from __future__ import annotations

import argparse
import signal
import socket

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a local web page comparing our codec with JPEG, WebP and AVIF",
        description="Serve a web page where you drop an image (or pick a sample) and see our "
        "model's reconstruction beside JPEG, WebP and AVIF at the same file size, with bytes, "
        "bpp, PSNR, MS-SSIM and timings. Listens on 127.0.0.1 only unless --host says "
        "otherwise; opens no browser. Needs the serve extra: pip install 'varicodec[serve]'.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument("--model", help="model name or .safetensors path (default: bundled)")
    p.add_argument("--max-upload-mb", type=float, default=32.0,
                   help="largest accepted upload in MiB (default 32)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest accepted image in pixels (default 16777216)")
    p.add_argument("--workers", type=int, default=2,
                   help="comparisons coded at the same time (default 2; each holds a model copy)")
    p.set_defaults(func=_serve)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a taken port is one clear error line."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _serve(args: argparse.Namespace) -> int:
    try:
        import multipart  # noqa: F401  (python-multipart: Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ValueError(f"varicodec serve needs {e.name}: pip install 'varicodec[serve]'") \
            from None
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    from .app import DEFAULT_MAX_PIXELS, LOCAL_HOSTS, create_app

    sock = _listen(args.host, args.port)
    try:
        hosts = list(LOCAL_HOSTS)
        if args.host not in hosts:
            hosts.append(args.host)
        if args.host in ("0.0.0.0", "::", ""):
            hosts = ["*"]  # listening everywhere: any name that reaches it
        app = create_app(args.model, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                         max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
                         threads=args.workers, allowed_hosts=hosts)
        model = app.state.model
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"varicodec serve: http://{shown}:{port}/  (model {model.name}; Ctrl-C stops)",
              flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        # uvicorn re-raises a captured Ctrl-C once it has shut down, but asyncio's runner
        # can swallow it (seen under load: exit 0 after Ctrl-C); make it the CLI's 130
        if signal.SIGINT in getattr(server, "_captured_signals", ()):
            raise KeyboardInterrupt
    finally:
        sock.close()
    return 0
