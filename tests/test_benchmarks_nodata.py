"""A benchmark without its data measures nothing: it exits non-zero and says so."""

import pytest
from conftest import load_benchmark


@pytest.mark.parametrize("name", ["rate_control", "grid_speed", "sparse_speed"])
def test_missing_data_is_not_a_success(name, tmp_path, capsys):
    bench = load_benchmark(name)
    assert bench.main(["--data", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "nothing measured" in err and str(tmp_path / "nothing") in err
