"""An update reads nothing back to the host: on a GPU every host read stalls the queue of kernels, so the
non-finite guard, the skip counters and the metrics stay on the device until the trainer logs them."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from rssm.build import build_agent
from rssm.envs import EnvSpec

# Tensor methods that hand a value to Python, and ops whose output shape depends on the data (a host read on CUDA).
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
         torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}
DATA_SHAPED = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.masked_select.default, torch.ops.aten.unique_dim.default,
               torch.ops.aten._unique2.default}


class HostReads(TorchFunctionMode):
    """Records every host read made inside it: Python-level reads (`item`, `bool`, `tolist`, ...) and, through
    a dispatch mode, those that torch's kernels make (`F.one_hot` checking its indices, boolean masks)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        outer = self

        class Kernels(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                bool_index = func is torch.ops.aten.index.Tensor and any(
                    i is not None and i.dtype == torch.bool for i in args[1])
                if func in DATA_SHAPED or bool_index:
                    outer.reads.append(str(func))
                return func(*args, **(kwargs or {}))

        self.kernels = Kernels()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(getattr(func, "__name__", str(func)))
        # A tensor made from Python numbers: on a GPU, a copy from the host that waits for it.
        if func is torch.tensor or func is torch.as_tensor and args and not torch.is_tensor(args[0]):
            self.reads.append(f"{func.__name__} from Python data")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.kernels.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.kernels.__exit__(*exc)


def batch(B: int, T: int, spec: EnvSpec, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    A = spec.action_dim
    action = (np.eye(A, dtype=np.float32)[g.integers(0, A, (B, T))] if spec.discrete
              else g.uniform(-1, 1, (B, T, A)).astype(np.float32))
    is_first = g.random((B, T)) < 0.1
    is_first[:, 0] = True
    return {"obs": g.standard_normal((B, T, 4)).astype(np.float32), "action": action,
            "reward": g.standard_normal((B, T)).astype(np.float32), "is_first": is_first,
            "is_terminal": g.random((B, T)) < 0.05}


def test_the_probe_sees_host_reads():
    x = torch.ones(3)
    index = torch.tensor([1])
    with HostReads() as probe:
        bool(x.sum() > 0), x.tolist(), torch.nn.functional.one_hot(index, 3), x[x > 0], torch.as_tensor(0.5)
    assert probe.reads.count("__bool__") == 1 and "tolist" in probe.reads
    assert "as_tensor from Python data" in probe.reads
    assert "aten._local_scalar_dense.default" in probe.reads  # one_hot's check of its indices
    assert "aten.index.Tensor" in probe.reads


@pytest.mark.parametrize("overrides, discrete", [
    ((), True),  # today's DreamerV3: one joint step, LaProp, REINFORCE
    (("agent.actor_grad_continuous=backprop",), False),
    (("algo=dreamerv3_2023",), True),  # the world model's step, then the behaviour's; Adam
    (("algo=dreamerv3_2023",), False),
    (("agent=world_model",), True),
    (("precision=fp16",), True),  # with its loss scale
], ids=["now-discrete", "now-continuous-backprop", "2023-discrete", "2023-continuous", "world-model", "fp16"])
def test_an_update_reads_nothing_back(compose_config, overrides, discrete):
    cfg = compose_config("model=xxs", "model.deter=32", "model.units=32", "model.groups=4", "model.classes=4",
                         "agent.horizon=4", *overrides)
    spec = EnvSpec({"obs": (4,)}, (3,), discrete)
    agent = build_agent(cfg, spec, torch.device("cpu"))
    if agent.loss_scale is not None:
        agent.loss_scale.value.fill_(1.0)  # in range: float16's first scale, 2^16, overflows and skips at first
    agent.update(batch(4, 8, spec))  # optimizer states are made at the first step
    data = {k: torch.as_tensor(v) for k, v in batch(4, 8, spec, seed=1).items()}  # as on the device already
    with HostReads() as probe:
        metrics = agent.update(data)
    assert probe.reads == []
    assert metrics and all(torch.isfinite(v) for v in metrics.values())
    # A non-finite batch is skipped, still without a read.
    bad = {k: torch.as_tensor(v) for k, v in batch(4, 8, spec, seed=2).items()}
    bad["obs"][1, 2] = np.nan
    with HostReads() as probe:
        agent.update(bad)
    assert probe.reads == [] and (int(agent.skipped), int(agent.skipped_in_a_row)) == (1, 1)
