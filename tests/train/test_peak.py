"""The MFU denominator: the peak measured a product at a time, and in the precision trained."""

import json
import time

import numpy as np
import pytest

from simslm.train.loop import train
from tests.train.helpers import _config, _losses


def test_the_peak_is_measured_on_a_cpu_a_product_at_a_time(monkeypatch):
    """A CPU without native bf16 takes seconds a product: timed in rounds of 10, as a GPU is, the peak took 20
    products (26-51 s) before each bf16 run here. One at a time it takes as long as asked, give or take a product."""

    import torch

    from simslm.train.peak import measure_peak_flops

    class SlowProduct:  # a product of 0.2 s, counted
        count = 0

        def __matmul__(self, other):
            SlowProduct.count += 1
            time.sleep(0.2)

    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: SlowProduct())
    started = time.perf_counter()
    peak = measure_peak_flops("cpu", size=100, seconds=0.5, bf16=True)
    # Warm-up: 0.25 s (2 products); measured: 0.5 s (3 products).
    assert SlowProduct.count <= 6 and time.perf_counter() - started < 1.5
    assert peak == pytest.approx(2 * 100 ** 3 / 0.2, rel=0.2)


@pytest.mark.slow
def test_precision_bf16_trains_in_bf16_autocast_on_the_cpu_and_warns_where_that_is_slow(data, tmp_path, monkeypatch,
                                                                                         capsys, measured_peak):
    import torch

    import simslm.train.loop as train_module

    budget = 4 * 4 * 64
    train(_config(data, tmp_path / "fp32", budget_tokens=budget))
    # The MFU denominator is measured in the precision trained; here bf16 is made to measure slower than fp32.
    measured = []

    def peak(device, bf16=None, **_):
        measured.append(bf16)
        return 1e9 if bf16 else 1e10

    monkeypatch.setattr(train_module, "measure_peak_flops", peak)
    dtypes = set()
    linear = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward",
                        lambda self, x: dtypes.add(linear(self, x).dtype) or linear(self, x))
    train(_config(data, tmp_path / "bf16", budget_tokens=budget, precision="bf16"))
    assert torch.bfloat16 in dtypes and measured == [True, False]
    assert "--precision bf16: this CPU's bf16 matrix products run at 1.0 GFLOP/s against 10.0 in fp32" in \
        capsys.readouterr().err
    fp32, bf16 = np.asarray(_losses(tmp_path / "fp32")), np.asarray(_losses(tmp_path / "bf16"))
    assert not np.array_equal(fp32, bf16) and np.max(np.abs(fp32 - bf16)) < 0.05  # bf16 products, the same run
    # Given by a sweep, both peaks are taken as given: nothing is measured, and the slow bf16 is still said.
    monkeypatch.setenv("SIMSLM_PEAK_FLOPS", "1e10")
    monkeypatch.setenv("SIMSLM_PEAK_FLOPS_BF16", "2e9")
    measured.clear()
    given = train(_config(data, tmp_path / "given", budget_tokens=budget, precision="bf16"))
    assert measured == [] and given.peak_flops_measured == 2e9
    assert "bf16 matrix products run at 2.0 GFLOP/s against 10.0 in fp32" in capsys.readouterr().err
    for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines():
        logged = json.loads(line)  # MFU against the bf16 peak: 1e9 FLOP/s here
        assert logged["mfu"] == pytest.approx(logged["flops"] / logged["tokens"] * logged["tokens_per_sec"] / 1e9)

