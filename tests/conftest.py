import os
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    # the mutation runs fork per mutant: they ask for 1 thread (no OpenMP pool to fork)
    torch.set_num_threads(int(os.environ.get("VARICODEC_TEST_THREADS", "2")))


@pytest.fixture
def image():
    """A smooth-ish 1×3×128×64 test image (tiny, deterministic)."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 16, 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(128, 64), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1)


def tiny(name: str, **kw):
    from varicodec import create_model

    torch.manual_seed(0)
    return create_model(name, N=16, M=16, **kw)


def set_sparsity(model, alpha: float = 0.8) -> None:
    """Open the gates part way so that coding exercises the gated paths."""
    for _, g in model.gates():
        g.alpha.data.fill_(alpha)


def write_images(folder: Path, count: int, size: tuple[int, int], detail: int) -> Path:
    """``count`` smooth random RGB PNGs ``im{i}.png`` of ``size`` (W×H) in a new
    ``folder`` (``detail``² random pixels upsampled, seed 0): data for tiny recipes."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        a = rng.integers(0, 256, (detail, detail, 3), dtype=np.uint8)
        Image.fromarray(a).resize(size, Image.Resampling.BICUBIC).save(folder / f"im{i}.png")
    return folder


@pytest.fixture
def data_dir():
    if not (DATA / "train").is_dir():
        pytest.skip(f"training data not found at {DATA} (see ../shared/data/README.md)")
    return DATA


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP
    spinning makes them ~8x slower: modules opt in with ``pytestmark``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
