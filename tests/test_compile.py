"""compile=true: the RSSM's posterior step (in updates and in acting) and acting go through torch.compile and give
what eager gives.

The tests use the `aot_eager` backend (the graphs dynamo captures and AOT autograd splits, run op by op): it
checks the capture and the static shapes in seconds, where inductor's code generation takes half a minute on a
CPU (scripts/benchmark.py --compile measures inductor)."""

import importlib.util

import numpy as np
import pytest
import torch

import rssm.build
from rssm.build import build_agent
from rssm.envs import EnvSpec


def batches(n: int, B: int = 2, T: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    return [{"obs": g.standard_normal((B, T, 4)).astype(np.float32),
             "action": np.eye(2, dtype=np.float32)[g.integers(0, 2, (B, T))],
             "reward": g.standard_normal((B, T)).astype(np.float32), "is_first": g.random((B, T)) < 0.2,
             "is_terminal": g.random((B, T)) < 0.1} for _ in range(n)]


@pytest.mark.parametrize("overrides", [(), ("algo=dreamerv3_2023",), ("compile_mode=reduce-overhead",)],
                         ids=["now", "2023", "reduce-overhead"])
def test_compiled_update_and_act_match_eager(compose_config, monkeypatch, overrides):
    monkeypatch.setattr(rssm.build, "COMPILE_BACKEND", "aot_eager")
    data = batches(2)
    results = {}
    for compiled in (False, True):
        cfg = compose_config("model=debug", "agent.horizon=2", f"compile={str(compiled).lower()}", *overrides)
        torch.manual_seed(0)
        agent = build_agent(cfg, EnvSpec({"obs": (4,)}, (2,), True), torch.device("cpu"))
        assert agent.compiled == compiled
        metrics = [agent.update(b) for b in data]
        actions, state = agent.act({k: v[:, 0] for k, v in data[0].items()}, None, explore=False)
        params = [p.detach().clone() for m in agent.modules().values() for p in m.parameters()]
        results[compiled] = metrics, actions, state.deter, params
    (m0, a0, h0, p0), (m1, a1, h1, p1) = results[False], results[True]
    for eager, compiled in zip(m0, m1, strict=True):
        assert eager.keys() == compiled.keys()
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
    np.testing.assert_array_equal(a1, a0)
    torch.testing.assert_close(h1, h0)
    for a, b in zip(p0, p1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_compile_mode_reaches_the_posterior_step_alone(compose_config, monkeypatch):
    """compile_mode=reduce-overhead (CUDA graphs on a CUDA device) compiles the posterior step in that mode (the
    test above checks its values, outputs copied out of the graph's pool); the prior step stays eager on a CPU (a
    GPU compiles it too); acting keeps the default mode, its state outliving an update."""
    monkeypatch.setattr(rssm.build, "COMPILE_BACKEND", "aot_eager")
    calls = []
    real = torch.compile

    def recording(fn, **kwargs):
        calls.append((fn.__name__, kwargs.get("mode")))
        return real(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", recording)
    for mode, expected in [("default", None), ("reduce-overhead", "reduce-overhead")]:
        calls.clear()
        cfg = compose_config("model=debug", "agent.horizon=2", "compile=true", f"compile_mode={mode}")
        agent = build_agent(cfg, EnvSpec({"obs": (4,)}, (2,), True), torch.device("cpu"))
        assert sorted(calls) == [("_obs_step", expected), ("_policy_step", None)]
        assert agent.wm.rssm.cuda_graphs == (mode == "reduce-overhead")


def test_compiled_image_model_matches_eager_and_keeps_its_names(compose_config, monkeypatch):
    """With images, compile=true also compiles the encoder and decoder in place: the same parameter names (a
    checkpoint loads either way), and updates and actions as eager's."""
    monkeypatch.setattr(rssm.build, "COMPILE_BACKEND", "aot_eager")
    g = np.random.default_rng(0)
    data = [{"image": g.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8),
             "action": np.eye(2, dtype=np.float32)[g.integers(0, 2, (2, 4))],
             "reward": g.standard_normal((2, 4)).astype(np.float32), "is_first": g.random((2, 4)) < 0.2,
             "is_terminal": g.random((2, 4)) < 0.1} for _ in range(2)]
    results = {}
    for compiled in (False, True):
        cfg = compose_config("model=debug", "agent.horizon=2", f"compile={str(compiled).lower()}")
        torch.manual_seed(0)
        agent = build_agent(cfg, EnvSpec({"image": (16, 16, 3)}, (2,), True), torch.device("cpu"))
        cnns = (agent.wm.image_encoder, agent.wm.image_decoder)
        assert all((m._compiled_call_impl is not None) == compiled for m in cnns)  # nn.Module.compile's
        metrics = [agent.update(b) for b in data]
        actions, _ = agent.act({k: v[:, 0] for k, v in data[0].items()}, None, explore=False)
        results[compiled] = metrics, actions, agent.wm.state_dict()
    (m0, a0, s0), (m1, a1, s1) = results[False], results[True]
    assert list(s1) == list(s0)
    for eager, compiled in zip(m0, m1, strict=True):
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
    np.testing.assert_array_equal(a1, a0)
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-5, atol=1e-6, msg=k)


def test_compile_auto_compiles_models_of_images_where_torch_has_a_compiler(compose_config, monkeypatch):
    """compile=auto, the default, compiles a model of images (where compiling was measured to pay on a CPU) and
    leaves one of vectors eager; where torch.compile finds no C++ compiler it stays eager rather than failing at
    the first update. true and false (or bools, as a saved config holds them) say it outright; the debug experiment
    turns it off."""
    assert compose_config().compile == "auto" and compose_config("experiment=debug").compile.lower() == "false"
    cpu = torch.device("cpu")
    images, vectors = EnvSpec({"image": (16, 16, 3)}, (2,), True), EnvSpec({"obs": (4,)}, (2,), True)
    from torch._inductor import config as inductor_config
    from torch._inductor import cpp_builder

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    assert build_agent(compose_config("model=debug"), images, cpu).compiled
    assert not build_agent(compose_config("model=debug"), vectors, cpu).compiled
    assert build_agent(compose_config("model=debug", "compile=true"), vectors, cpu).compiled
    assert not build_agent(compose_config("model=debug", "compile=false"), images, cpu).compiled
    settings = (True, False, "True", "false")
    assert [rssm.build.compile_enabled(s, True, cpu) for s in settings] == [True, False, True, False]
    monkeypatch.undo()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler",))  # the search runs it: not found
    assert not rssm.build.compile_enabled("auto", True, cpu)
    assert rssm.build.compile_enabled("true", True, cpu)
    cuda, find_spec = torch.device("cuda"), importlib.util.find_spec  # on a GPU, inductor's compiler is triton
    for triton in (True, False):
        def spec(name, present=triton):
            return (object() if present else None) if name == "triton" else find_spec(name)

        monkeypatch.setattr(importlib.util, "find_spec", spec)
        assert rssm.build.compile_enabled("auto", True, cuda) == triton
        assert not rssm.build.compile_enabled("auto", False, cuda)


def test_compiled_acting_has_one_graph_from_the_first_step_on(compose_config, monkeypatch):
    """Acting's first call, which has no state yet, starts from a state shaped like every later one: compiled, an
    episode's steps share one graph (per explore or not), rather than compiling a second at the second step."""
    monkeypatch.setattr(rssm.build, "COMPILE_BACKEND", "aot_eager")
    agent = build_agent(compose_config("model=debug", "compile=true"), EnvSpec({"obs": (4,)}, (2,), True),
                        torch.device("cpu"))
    step = {k: v[:, 0] for k, v in batches(1)[0].items()}
    _, state = agent.act(step, None, explore=True)
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(2):
            _, state = agent.act(step, state, explore=True)
