"""Start-up stays light (issue 13): what each entry point imports, and the CompressAI shim.

Import sets, not wall times, are asserted (the machine is shared); the times are
in docs/results/startup.md from benchmarks/startup.py.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import tiny_model

# the shim registers `compressai` itself (its __init__ deferred): count what runs code
HEAVY = ("torch", "compressai.entropy_models", "scipy", "torch_geometric")


def loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; which heavy modules it left loaded (+ its output)."""
    probe = (f"{code}\nimport sys, json\n"
             f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_varicodec_is_light():
    assert not any(loaded_after("import varicodec; varicodec.list_models()").values())


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["models"], ["decode", "--help"]])
def test_cli_paths_need_no_torch(argv):
    code = f"from varicodec.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert not any(loaded_after(code).values())


def test_info_needs_no_torch(tmp_path):
    from varicodec.codec import encode

    model = tiny_model("hyperprior-ecgbm", 0)
    model.update(force=True)
    path = tmp_path / "a.vcd"
    path.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), model, quality=3))
    loaded = loaded_after(f"from varicodec.cli import main; main(['info', {str(path)!r}])")
    assert not loaded["torch"] and not loaded["compressai.entropy_models"]


def test_coding_never_loads_the_point_cloud_stack():
    loaded = loaded_after("import varicodec; from compressai import ans  # a submodule by name\n"
                          "varicodec.load_model('hyperprior-ecgbm')")
    assert loaded["torch"] and loaded["compressai.entropy_models"] and not loaded["torch_geometric"]


def test_shim_gives_what_a_plain_import_gives():
    """After the shim, CompressAI's public names are all there and its own state works."""
    names = ("import types, compressai.models as m, compressai.entropy_models as e; "
             "print(sorted(n for n in dir(m) if not n.startswith('_') "
             "and not isinstance(getattr(m, n), types.ModuleType)))")
    plain = subprocess.run([sys.executable, "-c", names], capture_output=True, text=True,
                           timeout=300)
    shimmed = subprocess.run(
        [sys.executable, "-c", "import varicodec; from compressai.models import *; " + names],
        capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and shimmed.returncode == 0, shimmed.stderr
    assert plain.stdout.splitlines()[-1] == shimmed.stdout.splitlines()[-1]
    state = subprocess.run([sys.executable, "-c", (
        "import varicodec, compressai\n"
        "assert compressai.get_entropy_coder() == 'ans'\n"
        "compressai.set_entropy_coder('ans')\n"
        "from compressai.zoo import bmshj2018_hyperprior\n"  # the whole package on demand
        "from compressai.entropy_models import GaussianConditional\n"
        "g = GaussianConditional(None); g.update_scale_table(__import__('torch').ones(3))\n"
        "assert compressai.available_entropy_coders()[0] == 'ans'\n"
        "print(type(__import__('sys').modules['scipy.stats']).__name__)")],
        capture_output=True, text=True, timeout=300)
    assert state.returncode == 0, state.stderr
    assert state.stdout.strip() == "module"  # the stand-in made way for the real scipy.stats


def test_registry_entries_need_no_torch():
    code = ("from varicodec.models.registry import ARCHITECTURES, architecture\n"
            "from varicodec.codec.format import MODEL_IDS\n"
            "assert architecture('cheng2020-anchor-ecg').reference and MODEL_IDS\n"
            "assert all(a.default_widths for a in ARCHITECTURES.values())")
    assert not any(loaded_after(code).values())


def test_header_lambda_matches_the_model():
    from varicodec.codec.format import lmbda_from_code
    from varicodec.layers import LmbdaRange

    for lo, hi in ((0.0018, 0.18), (0.001, 0.5)):
        r = LmbdaRange(lo, hi)
        for code in (0, 1, 777, 32768, 65534, 65535):
            assert math.isclose(lmbda_from_code(code, (lo, hi)), r.decode(code), rel_tol=1e-15)
    with pytest.raises(ValueError):
        lmbda_from_code(65536, (0.0018, 0.18))


@pytest.mark.parametrize("delay_s", [0.3, 1.0])
def test_ctrl_c_in_a_real_process(tmp_path, delay_s):
    """SIGINT while torch loads or while coding: one line, exit 130."""
    import signal
    import time

    from PIL import Image

    from varicodec.demo import synthetic_image

    Image.fromarray(synthetic_image(512, 384)).save(tmp_path / "a.png")
    # A suite started in the background (`cmd &` from a script) inherits SIGINT ignored,
    # and Python then installs no handler: restore the default so the child gets it.
    p = subprocess.Popen([sys.executable, "-m", "varicodec", "encode", str(tmp_path / "a.png")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay_s)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the encode finished before the signal (a very fast machine)")
    assert p.returncode == 130 and err == "varicodec: interrupted\n", err
    assert [q.name for q in tmp_path.iterdir()] == ["a.png"]  # no output, no temporary file


#: a command whose output's write imports a module that is interrupted while it loads
INTERRUPTED_IMPORT = """
import sys
from pathlib import Path

import varicodec.cli as cli
from varicodec.util import atomic_write

folder = Path(sys.argv[1])


def command(args):
    sys.path.insert(0, str(folder))

    def write(tmp):
        tmp.write_bytes(b"half")
        import interrupts_itself  # noqa: F401

    atomic_write(folder / "out.bin", write)
    return 0


cli._cmd_models = command
sys.argv = ["varicodec", "models"]
sys.exit(cli.main())
"""

#: SIGINT inside a callback of an import, the way importlib's own callbacks meet it: a
#: KeyboardInterrupt raised there is printed as "Exception ignored" and lost
INTERRUPTS_ITSELF = """
import os, signal, weakref


class Thing:
    pass


def callback(ref):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100_000):  # Python runs the handler at one of these steps
        pass


thing = Thing()
ref = weakref.ref(thing, callback)
del thing
"""


def test_ctrl_c_during_an_import_ends_the_command_at_once(tmp_path):
    """Not a KeyboardInterrupt that an import's callback swallows (or that aborts the
    process inside torch's C++ code): one line, 130, the unfinished write removed."""
    import signal

    (tmp_path / "interrupts_itself.py").write_text(INTERRUPTS_ITSELF)
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, str(tmp_path)],
                       capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (r.returncode, r.stderr) == (130, "varicodec: interrupted\n")
    assert sorted(q.name for q in tmp_path.iterdir() if q.suffix != ".pyc"
                  and q.name != "__pycache__") == ["interrupts_itself.py"]


def test_inside_import_sees_module_code_only_while_it_loads(tmp_path, monkeypatch):
    import importlib

    from varicodec.cli import _inside_import

    (tmp_path / "probe_frames.py").write_text(
        "import sys\nfrom varicodec.cli import _inside_import\n"
        "WHILE_LOADING = _inside_import(sys._getframe())\n"
        "def later():\n    return _inside_import(sys._getframe())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = importlib.import_module("probe_frames")
    assert probe.WHILE_LOADING and not probe.later()
    assert not _inside_import(sys._getframe()) and not _inside_import(None)


def test_a_closed_pipe_ends_the_command_quietly():
    """``varicodec models | head -1``: the reader leaves before the output is written;
    the command ends with the status a shell gives SIGPIPE and says nothing (no
    "error: [Errno 32] Broken pipe", no traceback from the final flush)."""
    p = subprocess.Popen([sys.executable, "-m", "varicodec", "models"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the child has printed anything
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and err == b"", err
