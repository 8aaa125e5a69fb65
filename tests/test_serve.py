"""``varicodec serve`` through Starlette's TestClient: upload, compare, errors, limits, concurrency.

A tiny gated variable-rate model and images of a few dozen pixels keep it fast.
"""

import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import load_benchmark
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("multipart", reason="the serve extra is not installed")
from starlette.testclient import TestClient  # noqa: E402

from varicodec.serve.app import create_app  # noqa: E402
from varicodec.serve.compare import Target, match_size  # noqa: E402
from varicodec.serve.jobs import Job, JobStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def model():
    return load_benchmark("fuzz_format").tiny_model("hyperprior-ecgbm", 0)


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, max_upload_bytes=200_000, max_pixels=100_000, threads=2)
    with TestClient(app, base_url=BASE) as c:
        yield c


def picture(w: int = 64, h: int = 48, seed: int = 0) -> np.ndarray:
    from varicodec.demo import synthetic_image

    return synthetic_image(w, h, seed)


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def wait(client, job: str, timeout_s: float = 120) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        s = client.get(f"/api/jobs/{job}").json()
        if s["state"] in ("done", "error"):
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish in {timeout_s} s")


def submit(client, rgb: np.ndarray, name: str = "a.png", kind: str = "quality",
           value: str = "4") -> str:
    r = client.post("/api/compare", files={"file": (name, png(rgb), "image/png")},
                    data={"target": kind, "value": value})
    assert r.status_code == 202, r.text
    return r.json()["job"]


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "Drop an image" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.text) > 1000
        assert "http://" not in r.text and "https://" not in r.text  # no CDN, no network
    assert "https://" not in page.text and "http://" not in page.text
    info = client.get("/api/info").json()
    assert info["model"]["gated"] and info["model"]["variable_rate"]
    assert info["limits"] == {"max_upload_bytes": 200_000, "max_pixels": 100_000}
    assert set(info["codecs"]) == {"jpeg", "webp", "avif"}


def test_upload_compare_and_download(client, model):
    from varicodec.codec import decode

    rgb = picture()
    s = wait(client, submit(client, rgb, "holiday photo.png"))
    assert s["state"] == "done", s["error"]
    r = s["result"]
    assert r["image"] == {"width": 64, "height": 48, "name": "holiday photo.png"}
    panels = {p["codec"]: p for p in r["panels"]}
    assert list(panels) == ["ours", "jpeg", "webp", "avif"]
    job = s["id"]
    for codec, p in panels.items():
        data = client.get(f"/api/jobs/{job}/files/{codec}.{p['extension']}").content
        assert len(data) == p["bytes"] > 0
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (64 * 48))
        assert np.isfinite(p["psnr_db"]) and p["encode_s"] > 0 and p["decode_s"] > 0
        assert p["ms_ssim"] is None  # under 161 px: MS-SSIM has no five scales
        decoded = np.asarray(Image.open(io.BytesIO(
            client.get(f"/api/jobs/{job}/files/{codec}.png").content)))
        assert decoded.shape == (48, 64, 3)
        from varicodec.metrics import psnr_db

        assert psnr_db(rgb, decoded) == pytest.approx(p["psnr_db"])
    assert r["target"]["bytes"] == panels["ours"]["bytes"]
    # the .vcd is a real file: decoding it gives the PNG the page shows
    vcd = client.get(f"/api/jobs/{job}/files/ours.vcd?download=1")
    assert vcd.headers["content-disposition"] == 'attachment; filename="holiday_photo.ours.vcd"'
    ours_png = client.get(f"/api/jobs/{job}/files/ours.png").content
    assert np.array_equal(np.asarray(decode(vcd.content, model).convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(ours_png))))
    original = client.get(f"/api/jobs/{job}/files/original.png").content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(original))), rgb)
    # gated model: per-layer sparsity and FLOPs saved
    g = r["gating"]
    assert g["layers"] and all(0 <= x["sparsity"] <= 1 for x in g["layers"])
    for part in ("encoder", "decoder"):
        assert 0 < g[part]["flops"] <= g[part]["dense_flops"]
        assert g[part]["saved"] == pytest.approx(1 - g[part]["flops"] / g[part]["dense_flops"])
    assert client.delete(f"/api/jobs/{job}").status_code == 204
    assert client.get(f"/api/jobs/{job}").status_code == 404


def test_jpeg_and_bpp_targets(client):
    s = wait(client, submit(client, picture(96, 64), kind="jpeg", value="40"))
    assert s["state"] == "done", s["error"]
    r = s["result"]
    panels = {p["codec"]: p for p in r["panels"]}
    assert panels["jpeg"]["setting"] == "quality 40"
    assert r["target"]["bytes"] == panels["jpeg"]["bytes"]
    assert r["rate_control"]["kind"] == "bpp"
    assert r["rate_control"]["target"] == pytest.approx(panels["jpeg"]["bpp"])
    s = wait(client, submit(client, picture(96, 64), kind="bpp", value="2.5"))
    assert s["state"] == "done", s["error"]
    assert s["result"]["rate_control"]["target"] == 2.5


def test_alpha_and_gray_uploads(client):
    rgba = np.dstack([picture(), np.full((48, 64), 128, np.uint8)])
    s = wait(client, submit(client, rgba, "logo.png"))
    assert s["state"] == "done" and any("transparency ignored" in n for n in s["result"]["notes"])
    s = wait(client, submit(client, picture()[..., 0], "gray.png"))
    assert s["state"] == "done" and s["result"]["notes"] == []


def test_sample(client):
    r = client.post("/api/compare", data={"sample": "synthetic", "target": "quality",
                                          "value": "2"})
    assert r.status_code == 202
    s = wait(client, r.json()["job"])
    assert s["state"] == "done" and s["result"]["image"]["width"] == 768


@pytest.mark.parametrize("files,data,message", [
    ({"file": ("x.png", b"not an image at all", "image/png")}, {}, "x.png: not an image"),
    ({"file": ("empty.png", b"", "image/png")}, {}, "empty.png: the file is empty"),
    ({"file": ("cut.png", png(picture())[:120], "image/png")}, {}, "cut.png: cannot read"),
    (None, {}, "choose an image file"),
    (None, {"sample": "nope"}, "unknown sample 'nope'"),
    (None, {"sample": "synthetic", "target": "bpp", "value": "0"}, "bpp target must be above 0"),
    (None, {"sample": "synthetic", "target": "quality", "value": "9"},
     "quality target must be between 1 and 8"),
    (None, {"sample": "synthetic", "target": "size", "value": "9"}, "unknown target 'size'"),
])
def test_bad_requests_get_one_line(client, files, data, message):
    r = client.post("/api/compare", files=files, data=data)
    assert r.status_code == 400
    error = r.json()["error"]
    assert message in error and "\n" not in error


def test_oversized_upload_and_image(client):
    big = np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8)  # ~270 kB PNG
    r = client.post("/api/compare", files={"file": ("big.png", png(big), "image/png")})
    assert r.status_code == 413
    assert r.json()["error"] == "the upload is larger than this server's limit of 0.190735 MiB"
    chunked = client.post("/api/compare", content=iter([b"x" * 100_000] * 3),
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]
    wide = np.zeros((10, 20_000), np.uint8)  # 200 000 pixels, a small PNG
    r = client.post("/api/compare", files={"file": ("wide.png", png(wide), "image/png")})
    assert r.status_code == 400
    assert "exceeds the limit of 100000 pixels" in r.json()["error"]


def test_foreign_host_is_refused(model):
    with TestClient(create_app(model), base_url="http://evil.example") as c:
        assert c.get("/api/info").status_code == 400


def test_concurrent_uploads_get_their_own_results(client):
    images = {f"img{i}.png": picture(64 + 16 * i, 48, seed=i) for i in range(4)}
    jobs: dict[str, str] = {}

    def go(name):
        jobs[name] = submit(client, images[name], name, value=str(2 + i_of(name)))

    def i_of(name):
        return int(name[3])

    threads = [threading.Thread(target=go, args=(n,)) for n in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t0 = time.monotonic()
    assert client.get("/api/info").status_code == 200  # answered while the jobs run
    assert time.monotonic() - t0 < 5
    for name, job in jobs.items():
        s = wait(client, job)
        assert s["state"] == "done", s["error"]
        assert s["result"]["image"]["name"] == name
        original = np.asarray(Image.open(io.BytesIO(
            client.get(f"/api/jobs/{job}/files/original.png").content)))
        assert np.array_equal(original, images[name])
        ours = s["result"]["panels"][0]
        assert ours["setting"].startswith(f"quality {2 + i_of(name)}.00")


def test_match_size_picks_the_closest_file():
    sizes = {q: 100 + 10 * q for q in range(0, 101)}  # 100 … 1100 bytes

    def enc(q):
        return bytes(sizes[q])

    m = match_size(enc, 534, 0, 100)
    assert (m.setting, len(m.data), m.note) == (43, 530, None)
    assert m.trials <= 9
    assert match_size(enc, 536, 0, 100).setting == 44
    low = match_size(enc, 50, 0, 100)
    assert low.setting == 0 and "smallest file (100 bytes)" in low.note
    high = match_size(enc, 5000, 0, 100)
    assert high.setting == 100 and "largest file" in high.note


def test_fixed_rate_model_sets_the_size():
    from varicodec.serve.compare import compare

    fixed = load_benchmark("fuzz_format").tiny_model("hyperprior-base", 0)
    seen = []
    c = compare(picture(), fixed, Target("quality", 3), progress=lambda f, m: seen.append(f))
    assert c.gating is None and c.rate_control is None
    assert "fixed-rate model" in c.notes[0]
    assert c.target_bytes == c.panels[0].bytes and [p.codec for p in c.panels] == \
        ["ours", "jpeg", "webp", "avif"]
    assert seen == sorted(seen) and seen[-1] == 1.0  # progress only moves forward


def test_gating_report_dense_cache(model):
    from varicodec.serve.compare import gating_report

    rgb = picture(80, 64)
    cache: dict = {}
    first = gating_report(model, rgb, 0.01, cache)
    assert list(cache) == [(1, 3, 64, 128)]
    assert gating_report(model, rgb, 0.01, cache) == first == gating_report(model, rgb, 0.01)
    assert all(c.sparse for c in model.modules() if hasattr(c, "sparse"))  # switched back


def test_target_parsing():
    assert Target.parse("jpeg", "49.6") == Target("jpeg", 50)
    assert Target.parse("quality", 1).label() == "our quality 1"
    assert Target.parse("quality", 4, "50") == Target("quality", 4.0, 50)
    assert Target.parse("quality", 4, "50").label() == "our quality 4, refined (50 steps)"
    for kind, value in (("bpp", "nan"), ("bpp", "abc"), ("jpeg", "0"), ("quality", "inf")):
        with pytest.raises(ValueError):
            Target.parse(kind, value)
    for kind, refine, message in (("bpp", "50", "quality target"), ("jpeg", "5", "quality"),
                                  ("quality", "201", "0..200"), ("quality", "-1", "0..200"),
                                  ("quality", "2.5", "whole number")):
        with pytest.raises(ValueError, match=message):
            Target.parse(kind, "1" if kind != "jpeg" else "50", refine)


def test_refined_comparison_codes_a_refined_file(client, model):
    """``refine`` in the form: our file is refined (the setting says so, progress moves
    through the steps) and decodes with the plain decoder; the others match its size."""
    from varicodec.codec import decode, encode_image
    from varicodec.serve.compare import compare

    rgb = picture()
    seen: list[tuple[float, str]] = []
    c = compare(rgb, model, Target("quality", 4, 3), gating=False,
                progress=lambda f, m: seen.append((f, m)))
    ours = c.panels[0]
    assert ours.setting.endswith("refined (3 steps)")
    assert [m for _, m in seen if "step" in m][-1].endswith("step 3 of 3")
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    refined = encode_image(rgb, model, quality=4, refine=3, compute_psnr=False).data
    assert ours.data == refined != encode_image(rgb, model, quality=4, compute_psnr=False).data
    assert np.array_equal(np.asarray(decode(ours.data, model).convert("RGB")), ours.decoded)
    assert c.target_bytes == ours.bytes
    # through the server: the summary names the steps; a bpp target with steps is refused
    info = client.get("/api/info").json()["model"]["refine"]
    assert info == {"available": True, "problem": None, "max_steps": 200}
    r = client.post("/api/compare", files={"file": ("a.png", png(rgb), "image/png")},
                    data={"target": "quality", "value": "4", "refine": "3"})
    s = wait(client, r.json()["job"])
    assert s["state"] == "done", s["error"]
    assert s["result"]["target"]["refine"] == 3
    assert s["result"]["panels"][0]["bytes"] == len(refined)
    r = client.post("/api/compare", files={"file": ("a.png", png(rgb), "image/png")},
                    data={"target": "bpp", "value": "1", "refine": "3"})
    assert r.status_code == 400 and "quality target" in r.json()["error"]


def test_refine_is_refused_for_the_joint_model():
    joint = load_benchmark("fuzz_format").tiny_model("joint-bm", 0)
    app = create_app(joint, max_upload_bytes=200_000, max_pixels=100_000, threads=1)
    with TestClient(app, base_url=BASE) as c:
        info = c.get("/api/info").json()["model"]["refine"]
        assert not info["available"] and "autoregressive" in info["problem"]
        r = c.post("/api/compare", files={"file": ("a.png", png(picture()), "image/png")},
                   data={"target": "quality", "value": "4", "refine": "3"})
        assert r.status_code == 400 and "does not support" in r.json()["error"]


def test_job_store_is_bounded():
    store = JobStore(max_jobs=3, ttl_s=60)
    jobs = [Job(id=str(i), name="x", target=Target("quality", 4)) for i in range(10)]
    for j in jobs:
        j.finished = time.monotonic()
        store.add(j)
    assert len(store) == 3 and store.get("9") is jobs[9] and store.get("0") is None
    running = Job(id="r", name="x", target=Target("quality", 4))
    store.add(running)  # unfinished jobs are never dropped
    assert store.get("r") is running
    heavy = JobStore(max_jobs=10, max_bytes=250)
    for i in range(4):
        j = Job(id=str(i), name="x", target=Target("quality", 4), finished=time.monotonic())
        j.files = {"a.png": (bytes(100), "image/png")}
        heavy.add(j)
    assert len(heavy) == 2 and heavy.get("3") is not None
    alone = JobStore(max_bytes=10)
    big = Job(id="b", name="x", target=Target("quality", 4), finished=time.monotonic())
    big.files = {"a.png": (bytes(100), "image/png")}
    alone.add(big)
    assert alone.get("b") is big  # the newest is kept even over the budget
    old = JobStore(max_jobs=3, ttl_s=0.0)
    old.add(jobs[0])
    time.sleep(0.01)
    assert old.get("0") is None


def test_serve_help_imports_no_web_stack():
    code = ("from varicodec.cli import main\ntry:\n    main(['serve', '--help'])\n"
            "except SystemExit:\n    pass\nimport sys\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stderr


@pytest.mark.parametrize("argv,message", [
    (["--port", "70000"], "--port must be 0..65535"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
])
def test_serve_bad_options(argv, message, capsys):
    from varicodec.cli import main

    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_port_in_use(capsys):
    import socket

    from varicodec.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"varicodec: error: cannot listen on 127.0.0.1:{port}") and \
        err.count("\n") == 1


@pytest.mark.slow
def test_serve_command_runs_and_stops(tmp_path):
    """The real command: prints its URL, answers, stops on Ctrl-C (the CLI's one line, 130)."""
    import json
    import signal
    import urllib.request

    p = subprocess.Popen([sys.executable, "-m", "varicodec", "serve", "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("varicodec serve: http://127.0.0.1:"), p.stderr.read()
        url = line.split()[2]
        with urllib.request.urlopen(url + "api/info", timeout=30) as r:
            assert json.loads(r.read())["model"]["name"] == "hyperprior-ecgbm"
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err == "varicodec: interrupted\n", err
