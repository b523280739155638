"""Composition semantics: Stack order, Average weights, Gate mixtures, Route and Parallel per row."""

from __future__ import annotations

import pytest
import torch
from conftest import host_output, make_host, randomize

from polyglot_adapters import AdaptedModel, Average, BottleneckConfig, Gate, LoraConfig, Parallel, Route, Stack
from polyglot_adapters.errors import AdapterNotFoundError, CompositionError

FFN_OUT = "bert.encoder.layer.0.output.dense"


@pytest.fixture
def am() -> AdaptedModel:
    am = AdaptedModel(make_host())
    am.add_adapter("a", BottleneckConfig(reduction_factor=4))
    am.add_adapter("b", BottleneckConfig(reduction_factor=2, non_linearity="tanh"))
    am.add_adapter("l", LoraConfig(r=2, targets=("q", "v", "ffn_out")))
    am.train_adapters("a", "b", "l")
    randomize(am, std=0.5)
    return am


def run(am: AdaptedModel, composition, ids: torch.Tensor) -> torch.Tensor:
    am.set_active(composition)
    with torch.no_grad():
        return host_output(am, ids)


def at_site(am: AdaptedModel, composition, x: torch.Tensor) -> torch.Tensor:
    am.set_active(composition)
    with torch.no_grad():
        return am.model.get_submodule(FFN_OUT)(x)


def test_stack_applies_children_in_order(am: AdaptedModel) -> None:
    site = am.model.get_submodule(FFN_OUT)
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        y = site.base_layer(x)
        a, b, lora = site.adapters["a"], site.adapters["b"], site.adapters["l"]
        assert torch.allclose(at_site(am, Stack("a", "b"), x), b(x, a(x, y, None), None))
        assert torch.allclose(at_site(am, Stack("b", "a"), x), a(x, b(x, y, None), None))
        assert torch.allclose(at_site(am, Stack("l", "a"), x), a(x, lora(x, y, None), None))
    assert not torch.allclose(at_site(am, Stack("a", "b"), x), at_site(am, Stack("b", "a"), x))


def test_stack_of_one_equals_the_adapter(am: AdaptedModel, ids: torch.Tensor) -> None:
    assert torch.equal(run(am, Stack("a"), ids), run(am, "a", ids))


def test_average_weights(am: AdaptedModel) -> None:
    x = torch.randn(2, 3, 32)
    fa, fb = at_site(am, "a", x), at_site(am, "b", x)
    torch.testing.assert_close(at_site(am, Average("a", "b", weights=[0.3, 0.7]), x), 0.3 * fa + 0.7 * fb)
    torch.testing.assert_close(at_site(am, Average("a", "b", weights=[3, 7]), x), 0.3 * fa + 0.7 * fb)
    y = at_site(am, None, x)
    raw = at_site(am, Average("a", "b", weights=[1.0, 1.0], normalize=False), x)
    torch.testing.assert_close(raw, y + (fa - y) + (fb - y))


def test_average_with_weight_one_is_the_adapter(am: AdaptedModel, ids: torch.Tensor) -> None:
    torch.testing.assert_close(run(am, Average("a", "b", weights=[1, 0]), ids), run(am, "a", ids))


def test_gate_weights_sum_to_one_and_start_uniform(am: AdaptedModel, ids: torch.Tensor) -> None:
    gated = run(am, Gate("a", "b", name="g"), ids)
    torch.testing.assert_close(gated, run(am, Average("a", "b"), ids))
    site = am.model.get_submodule(FFN_OUT)
    randomize(site.gates["g"], std=1.0)
    weights = site.gates["g"](torch.randn(5, 16))
    assert weights.shape == (5, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))
    assert not torch.allclose(run(am, Gate("a", "b", name="g"), ids), gated)


def test_gate_prior_sets_the_starting_mixture(am: AdaptedModel, ids: torch.Tensor) -> None:
    gated = run(am, Gate("a", "b", name="g", prior=(1, 3)), ids)
    torch.testing.assert_close(gated, run(am, Average("a", "b", weights=[0.25, 0.75]), ids), rtol=1e-5, atol=1e-6)
    weights = am.model.get_submodule(FFN_OUT).gates["g"](torch.randn(4, 16))
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75]]).expand(4, 2))
    # the prior applies where the gate is created; an existing gate keeps its trained weights
    torch.testing.assert_close(run(am, Gate("a", "b", name="g", prior=(9, 1)), ids), gated)
    with pytest.raises(CompositionError, match="2 children but 3 prior"):
        Gate("a", "b", prior=(1, 1, 1))
    for bad in ((0, 1), (-1, 2), (float("nan"), 1), (float("inf"), 1)):
        with pytest.raises(CompositionError, match="positive and finite"):
            Gate("a", "b", prior=bad)


def test_gate_trains_through_train_adapters(am: AdaptedModel, ids: torch.Tensor) -> None:
    am.set_active(Gate("a", "b", name="g"))
    names = am.train_adapters("g")
    assert names and all(".gates.g." in n for n in names)
    host_output(am, ids).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in am.trainable_parameters().values())
    with pytest.raises(CompositionError, match="already mixes"):
        am.set_active(Gate("a", "b", "l", name="g"))
    with pytest.raises(CompositionError, match="already an adapter"):
        am.set_active(Gate("a", "b", name="l"))


def test_route_equals_running_each_group_alone(am: AdaptedModel, ids: torch.Tensor) -> None:
    groups = torch.tensor([1, 0, 2, 1])
    mapping = {0: "a", 1: Stack("l", "b"), 2: Average("a", "b")}
    routed = run(am, Route(groups, mapping), ids)
    for gid, composition in mapping.items():
        rows = (groups == gid).nonzero().squeeze(1)
        alone = run(am, composition, ids[rows])
        torch.testing.assert_close(routed[rows], alone, rtol=1e-5, atol=1e-6)


def test_route_with_one_group_equals_the_adapter(am: AdaptedModel, ids: torch.Tensor) -> None:
    assert torch.equal(run(am, Route([0, 0, 0, 0], {0: "a"}), ids), run(am, "a", ids))


def test_route_trains_each_group_on_its_own_rows(am: AdaptedModel, ids: torch.Tensor) -> None:
    am.set_active(Route([0, 0, 0, 0], {0: "a", 1: "b"}))
    am.train_adapters("a", "b")
    host_output(am, ids).pow(2).mean().backward()
    grads = {n: p.grad for n, p in am.trainable_parameters().items()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".adapters.a." in n)
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if ".adapters.b." in n)


def test_parallel_equals_running_each_branch_alone(am: AdaptedModel, ids: torch.Tensor) -> None:
    out = run(am, Parallel("a", Stack("l", "b")), ids)
    n = ids.shape[0]
    assert out.shape[0] == 2 * n
    torch.testing.assert_close(out[:n], run(am, "a", ids), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[n:], run(am, Stack("l", "b"), ids), rtol=1e-5, atol=1e-6)


def test_parallel_inside_stack_shares_the_first_adapter(am: AdaptedModel, ids: torch.Tensor) -> None:
    out = run(am, Stack("l", Parallel("a", "b")), ids)
    n = ids.shape[0]
    torch.testing.assert_close(out[:n], run(am, Stack("l", "a"), ids), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[n:], run(am, Stack("l", "b"), ids), rtol=1e-5, atol=1e-6)


def test_parallel_replicates_the_attention_mask(am: AdaptedModel) -> None:
    ids = torch.randint(3, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    am.set_active(Parallel("a", "b"))
    with torch.no_grad():
        out = am(input_ids=ids, attention_mask=mask).logits
        am.set_active("b")
        alone = am(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out[3:], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Average(Parallel("a", "b")), "cannot be nested in Average"),
        (lambda: Parallel(Route([0], {0: "a"}), "b"), "cannot be nested in Parallel"),
        (lambda: Gate(Average("a", "b"), "l"), "cannot be nested in Gate"),
        (lambda: Stack(Parallel("a", "b"), Parallel("a", "l")), "at most one Parallel"),
        (lambda: Stack(), "at least one child"),
        (lambda: Stack("a", "a"), "names an adapter twice"),
        (lambda: Stack("a", "missing"), "unknown adapters"),
        (lambda: Stack("a", 3), "cannot be nested"),
        (lambda: 7, "not a composition block"),
    ],
)
def test_invalid_compositions_are_refused(am: AdaptedModel, make, message: str) -> None:
    with pytest.raises(CompositionError, match=message):
        am.set_active(make())


def test_bad_blocks_fail_at_construction() -> None:
    with pytest.raises(CompositionError, match="no entry in the mapping"):
        Route([0, 3], {0: "a"})
    with pytest.raises(CompositionError, match="1-D integer"):
        Route(torch.zeros(2, 2, dtype=torch.long), {0: "a"})
    with pytest.raises(CompositionError, match="weights"):
        Average("a", "b", weights=[1.0])


def test_route_with_wrong_batch_size_is_a_clear_error(am: AdaptedModel, ids: torch.Tensor) -> None:
    am.set_active(Route([0, 1], {0: "a", 1: "b"}))
    with pytest.raises(CompositionError, match="Route has 2 ids but the batch has 4 rows"):
        host_output(am, ids)


def test_adapter_absent_from_a_site_is_the_identity_there(ids: torch.Tensor) -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("first", BottleneckConfig(layers=(0,)))
    am.add_adapter("second", BottleneckConfig(layers=(1,)))
    am.train_adapters("first", "second")
    randomize(am)
    stacked = run(am, Stack("first", "second"), ids)
    assert not torch.allclose(stacked, run(am, "first", ids))
    assert "second" not in am.model.get_submodule(FFN_OUT).adapters


def test_deleting_an_active_adapter_deactivates_the_composition(am: AdaptedModel, ids: torch.Tensor) -> None:
    pristine = host_output(make_host(), ids)
    am.set_active(Stack("a", "b"))
    am.delete_adapter("a")
    assert am.active is None
    with torch.no_grad():
        torch.testing.assert_close(host_output(am, ids), pristine)
    with pytest.raises(AdapterNotFoundError):
        am.delete_adapter("a")
