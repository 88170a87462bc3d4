"""PerLayerStep (updates inside backward, correct under accumulation) and the LISA wrapper."""

from __future__ import annotations

import io

import pytest
import torch

from optforge.lowrank import LISA, GaLoreAdamW, PerLayerStep


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(n)]


def _loss(model, xy):
    return torch.nn.functional.mse_loss(model(xy[0]), xy[1])


def _factory(p):
    return GaLoreAdamW(p, lr=1e-2, rank=4, update_proj_gap=3)


@pytest.mark.parametrize("accumulation", [1, 4])
def test_per_layer_equals_whole_model_steps_under_accumulation(accumulation) -> None:
    per_layer, whole = _model(), _model()
    stepper = PerLayerStep(per_layer.parameters(), _factory, accumulation_steps=accumulation)
    opts = [_factory([p]) for p in whole.parameters()]  # same per-parameter optimizers
    batches = _batches(3 * accumulation)
    for i, xy in enumerate(batches):
        _loss(per_layer, xy).backward()  # steps happen inside backward
        _loss(whole, xy).backward()
        if (i + 1) % accumulation == 0:
            for opt in opts:
                opt.step()
                opt.zero_grad()
    assert stepper.step_count == 3
    for a, b in zip(per_layer.parameters(), whole.parameters()):
        assert a.grad is None  # freed at once
        assert torch.equal(a, b)
    state = stepper.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    again = PerLayerStep(_model().parameters(), _factory, accumulation_steps=accumulation)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.step_count == 3
    with pytest.raises(ValueError, match="accumulation_steps"):
        PerLayerStep(_model().parameters(), _factory, accumulation_steps=2).load_state_dict(
            state if accumulation != 2 else {**state, "accumulation_steps": 3}
        )


def _live_grad_peak(model, per_layer: bool, steps: int = 2) -> int:
    """Peak bytes of gradients alive at once over ``steps`` training steps, counted by a hook
    that runs before PerLayerStep's (registered first: it sees each gradient just
    accumulated, before the step frees it)."""
    params = list(model.parameters())
    peak = [0]

    def count(_):
        now = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        peak[0] = max(peak[0], now)

    for p in params:
        p.register_post_accumulate_grad_hook(count)
    if per_layer:
        PerLayerStep(params, _factory)
    else:
        opt = GaLoreAdamW(params, lr=1e-2, rank=4, update_proj_gap=3)
    for xy in _batches(steps):
        _loss(model, xy).backward()
        if not per_layer:
            opt.step()
            opt.zero_grad()
    return peak[0]


def test_per_layer_lowers_live_gradients_to_one_parameter() -> None:
    # The memory property behind "per-layer mode lowers peak memory by the gradient bytes",
    # counted exactly instead of through RSS: a whole-model step holds every gradient at once,
    # per-layer updates at most the largest single one (which must exist while it is used).
    sizes = [p.numel() * p.element_size() for p in _model().parameters()]
    assert _live_grad_peak(_model(), per_layer=False) == sum(sizes)
    assert _live_grad_peak(_model(), per_layer=True) == max(sizes)


def _lisa(seed=0, free_state=True, rewarm_steps=0):
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(torch.nn.Linear(6, 6) for _ in range(4))
    head = torch.nn.Linear(6, 2)
    params = [p for b in blocks for p in b.parameters()] + list(head.parameters())
    opt = LISA(torch.optim.AdamW(params, lr=1e-2), [list(b.parameters()) for b in blocks],
               n_active=1, period=3, seed=seed, free_state=free_state,
               rewarm_steps=rewarm_steps)  # fmt: skip
    return blocks, head, opt


def _lisa_step(blocks, head, opt, x):
    h = x
    for b in blocks:
        h = torch.tanh(b(h))
    opt.zero_grad()
    head(h).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("rewarm_steps", [0, 5])
def test_lisa_trains_sampled_layers_frees_state_and_resumes(rewarm_steps) -> None:
    blocks, head, opt = _lisa(rewarm_steps=rewarm_steps)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    seen = set()
    for step in range(9):
        active = opt.active_layers()
        assert len(active) == 1
        seen.update(active)
        before = [b.weight.detach().clone() for b in blocks]
        _lisa_step(blocks, head, opt, x)
        for i, b in enumerate(blocks):
            moved = not torch.equal(b.weight, before[i])
            assert moved == (i in active), (step, i, active)
        if step == 4:
            saved = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "model": [p.detach().clone() for p in
                        [*blocks.parameters(), *head.parameters()]]}, saved)  # fmt: skip
        # inactive layers hold no optimizer state after the period's draw
        for i, b in enumerate(blocks):
            if i not in opt.active_layers():
                assert b.weight not in opt.state
    assert len(seen) > 1
    final = [p.detach().clone() for p in [*blocks.parameters(), *head.parameters()]]
    saved.seek(0)
    ckpt = torch.load(saved, weights_only=True)
    blocks2, head2, opt2 = _lisa(rewarm_steps=rewarm_steps)
    with torch.no_grad():
        for p, v in zip([*blocks2.parameters(), *head2.parameters()], ckpt["model"]):
            p.copy_(v)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.lisa_step == 5
    for _ in range(4):
        _lisa_step(blocks2, head2, opt2, x)
    for a, b in zip(final, [*blocks2.parameters(), *head2.parameters()]):
        assert torch.equal(a, b)


def test_lisa_keep_state_resumes_stale_moments() -> None:
    """free_state=False (LMFlow's requires_grad callback): a frozen layer keeps its moments
    untouched, and when re-drawn AdamW continues from them (its step count goes on)."""
    blocks, head, opt = _lisa(free_state=False)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    frozen_at: dict[int, tuple[int, torch.Tensor]] = {}
    redrawn = 0
    for _ in range(30):
        active = opt.active_layers()
        for i in active:
            if i in frozen_at:  # re-drawn: the kept state is exactly what it left with
                count, exp_avg = frozen_at.pop(i)
                st = opt.state[blocks[i].weight]
                assert int(st["step"]) == count and torch.equal(st["exp_avg"], exp_avg)
                redrawn += 1
        _lisa_step(blocks, head, opt, x)
        for i, b in enumerate(blocks):
            if i not in opt.active_layers() and b.weight in opt.state and i not in frozen_at:
                st = opt.state[b.weight]
                frozen_at[i] = (int(st["step"]), st["exp_avg"].clone())
    assert redrawn > 0
    # with the default, the same schedule leaves no state on any frozen layer
    blocks, head, opt = _lisa()
    for _ in range(30):
        _lisa_step(blocks, head, opt, x)
    active = opt.active_layers()
    assert all(b.weight not in opt.state for i, b in enumerate(blocks) if i not in active)


def _rewarm_deltas(rewarm_steps: int, steps: int) -> list[list[torch.Tensor]]:
    """Per step, each block's weight change, under fixed gradients (so AdamW's moments, which
    do not depend on lr, evolve the same with and without the re-warm-up)."""
    blocks, head, opt = _lisa(rewarm_steps=rewarm_steps)
    for group in opt.param_groups:  # decoupled decay would make the step depend on the weights
        group["weight_decay"] = 0.0
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(steps, *b.weight.shape, generator=gen) for b in blocks]
    deltas = []
    for t in range(steps):
        before = [b.weight.detach().clone() for b in blocks]
        active = opt.active_layers()
        for i, b in enumerate(blocks):
            b.weight.grad = grads[i][t].clone() if i in active else None
        opt.step()
        deltas.append([b.weight.detach() - w for b, w in zip(blocks, before)])
    return deltas


def test_lisa_rewarm_scales_a_fresh_layers_update_linearly() -> None:
    """rewarm_steps=W: a layer's k-th step since it became active moves it by (k + 1)/W of the
    step it would take without the re-warm-up (a run of consecutive draws counts as one
    activation); from the W-th step on, by the whole step."""
    W, steps = 5, 24  # period 3: a run of two consecutive draws outlasts W
    plain, warm = _rewarm_deltas(0, steps), _rewarm_deltas(W, steps)
    blocks, head, opt = _lisa()
    since = {}
    scaled = 0
    for t in range(steps):
        active = set(opt.active_layers())
        since = {i: since.get(i, -1) + 1 for i in active}
        for i in range(4):
            w = min(1.0, (since[i] + 1) / W) if i in active else 0.0
            # fp32 differences of weights ~0.4: a few 1e-8 of rounding
            torch.testing.assert_close(warm[t][i], w * plain[t][i], rtol=1e-5, atol=2e-7)
            scaled += 0 < w < 1
        opt.lisa_step += 1  # follow the draws without stepping
    assert scaled > 4


def test_lisa_bad_input() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"n_active must be <= 1 layers \(got 2\)"):
        LISA(torch.optim.SGD([p], lr=0.1), [[p]], n_active=2)
    with pytest.raises(ValueError, match="does not"):
        LISA(torch.optim.SGD([p], lr=0.1), [[torch.nn.Parameter(torch.zeros(1))]], n_active=1)
    with pytest.raises(TypeError, match="free_state must be True or False"):
        LISA(torch.optim.SGD([p], lr=0.1), [[p]], n_active=1, free_state=0)
    with pytest.raises(ValueError, match="rewarm_steps"):
        LISA(torch.optim.SGD([p], lr=0.1), [[p]], n_active=1, rewarm_steps=-1)
