"""Every ```python block of README.md and docs/**/*.md runs as written, on CPU.

The blocks of one page run in order in one namespace (a later block may continue an earlier
one), in a temporary directory, with the optimizer registry restored afterwards. A traceback
names the Markdown file and its line.

- Names a page leaves to the reader (the user's ``model``, ``loader``, ``loss_fn``) come from
  ``SETUP[page]``: small CPU stand-ins, run before the page's first block.
- ``SUBSTITUTE[page]`` replaces a placeholder or a CUDA-only argument in the page's code (each
  pair must still match the page, so a stale entry fails).
- ``CHECK[page]`` runs after the last block and asserts what the prose around it claims.
- Pages in ``SLOW`` (deliberately long examples) run only with ``-m slow``.
- A block preceded by ``<!-- no-test: reason -->`` (on the line before the fence, or among the
  HTML-comment lines right before it) is not run; say why in the reason.

``optforge bench`` commands in the docs are parsed, not run (a run takes minutes): their flags
and the built-in names they use must exist (``test_bench_commands_in_the_docs_parse``).
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from optforge import registry

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(\S.*?)\s*-->")


def blocks(page: str) -> list[tuple[int, str, str | None]]:
    """``(first code line, code, no-test reason or None)`` for each python block of ``page``."""
    text = (ROOT / page).read_text()
    out = []
    for m in FENCE.finditer(text):
        reason = None
        for line in reversed(text[: m.start()].splitlines()):
            if not line.strip().startswith("<!--"):
                break
            if found := NO_TEST.search(line):
                reason = found.group(1)
        out.append((text.count("\n", 0, m.start(1)) + 1, m.group(1), reason))
    return out


PAGES = [p.relative_to(ROOT).as_posix()
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
         if FENCE.search(p.read_text())]

# A GPT-2-shaped toy LM: transformer.h blocks whose linears are named attn/mlp, which
# galore_param_groups projects by default, and an lm_head it leaves to plain AdamW.
_TINY_LM = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn, self.mlp = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.mlp(torch.relu(self.attn(x)))

class TinyLM(nn.Module):
    def __init__(self, vocab=40, d=24, n_layer=3):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, d)
        self.transformer.h = nn.ModuleList(Block(d) for _ in range(n_layer))
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.transformer.wte(ids)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(x)

torch.manual_seed(0)
model = TinyLM()
ids = torch.randint(0, 40, (4, 10))
loader = [ids] * 8
def loss_fn(logits):
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
"""

# After an example that only builds `opt` for `model`: it trains (the loss falls in 5 steps).
_TRAINS = """
losses = []
for _ in range(5):
    opt.zero_grad()
    losses.append(loss_fn(model(ids)).item())
    loss_fn(model(ids)).backward()
    opt.step()
assert losses[-1] < losses[0], losses
"""

SETUP = {
    "README.md": """
import torch
class MyModel(torch.nn.Sequential):
    def __init__(self):
        super().__init__(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
""",
    "docs/lowrank/fira.md": _TINY_LM,
    "docs/lowrank/frugal.md": _TINY_LM,
    "docs/lowrank/lisa.md": _TINY_LM,
    "docs/lowrank/natural_galore.md": _TINY_LM,
    "docs/lowrank/per_layer.md": _TINY_LM,
    "docs/lowrank/qgalore.md": _TINY_LM,
    "docs/optim/eightbit.md": _TINY_LM + "model = TinyLM(d=64)  # 64×64 weights: 8-bit moments\n",
    "docs/optim/agvm.md": """
import copy
import torch
from torch import nn
class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.neck, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
    def forward(self, x):
        return self.head(torch.relu(self.neck(torch.relu(self.backbone(x)))))
torch.manual_seed(0)
model = Detector()
twin = copy.deepcopy(model)
loss_fn = nn.functional.cross_entropy
loader = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(3)]
def split_in_two(images, targets):
    n = len(images) // 2
    return [(images[:n], targets[:n]), (images[n:], targets[n:])]
""",
    "docs/optim/conventions.md": """
import torch
loss_fn = torch.nn.functional.mse_loss
x, y = torch.randn(16, 8), torch.randn(16, 4)
""",
    "docs/search/bo.md": """
def train_and_score(config):
    return (config["learning_rate"] - 1e-3) ** 2 + config["weight_decay"]
""",
    "docs/zo/index.md": """
import torch
torch.manual_seed(0)
params = [torch.randn(5), torch.randn(1)]
x, y = torch.randn(20, 5), torch.randn(20)
def fn(w, b):
    return ((x @ w + b - y) ** 2).mean()
def closure():
    return fn(*params)
""",
    "docs/zo/mezo.md": """
import types
import torch
from torch import nn
class Model(nn.Module):          # a Hugging Face-style model: forward(**batch).loss
    def __init__(self):
        super().__init__()
        self.linear, self.drop = nn.Linear(6, 3), nn.Dropout(0.5)
    def forward(self, input_ids, labels):
        logits = self.linear(self.drop(input_ids))
        return types.SimpleNamespace(loss=nn.functional.cross_entropy(logits, labels))
torch.manual_seed(0)
model = Model()
loader = [{"input_ids": torch.randn(8, 6), "labels": torch.randint(0, 3, (8,))}] * 3
""",
    "docs/zo/deepzero.md": """
import torch
torch.manual_seed(0)
x0, y0 = torch.randn(32, 8), torch.randint(0, 3, (32,))
loader = [(x0, y0)] * 2
""",
    "docs/zo/offload.md": """
import types
import torch
from torch import nn
class Decoder(nn.Module):
    def __init__(self, vocab=20, d=8):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(2))
        self.norm, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab)
    def forward(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return types.SimpleNamespace(logits=self.lm_head(self.norm(x)))
torch.manual_seed(0)
model = Decoder()
twin = Decoder()
twin.load_state_dict(model.state_dict())
initial = [p.detach().clone() for p in model.parameters()]
loader = [(torch.randint(0, 20, (4, 6)), torch.randint(0, 20, (4, 6)))] * 2
def loss_fn(logits, labels):
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
""",
}

SUBSTITUTE = {
    # the GradScaler loop on CPU (the page's "or \"cpu\""), so the scaler is not disabled
    "docs/optim/conventions.md": [('"cuda"', '"cpu"')],
    # the page's model is a placeholder; any nn.Sequential of layers will do
    "docs/zo/deepzero.md": [("torch.nn.Sequential(...)", "torch.nn.Sequential(torch.nn.Linear("
                             "8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))")],
    # no GPU here: device=None computes where the parameters are (the engine's CPU path)
    "docs/zo/offload.md": [('device="cuda"', "device=None")],
    # torchvision is not a dependency: a stand-in with resnet18's first layer (no bias)
    "docs/optim/tract.md": [
        ("import torch, torchvision", "import torch"),
        ("torchvision.models.resnet18(num_classes=10)",
         "torch.nn.Sequential(); model.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False); "
         "model.pool = torch.nn.AdaptiveAvgPool2d(1); model.flat = torch.nn.Flatten(); "
         "model.fc = torch.nn.Linear(64, 10); keys = list(model.state_dict())"),
    ],
}

CHECK = {
    "README.md": """
assert type(optimizer).__name__ == "Lion"
assert [g["weight_decay"] for g in optimizer.param_groups] == [1.0, 0.0]
assert len(optimizer.param_groups[1]["params"]) == 4      # two biases, the norm's two
""",
    "docs/optim/adamw.md": """
assert sorted(state) == ['exp_avg', 'exp_avg_sq', 'master', 'step']
assert state['master'].dtype == torch.float32
assert abs(loss.item() - 0.8359) < 4e-3                   # the printed loss, to one bf16 step
""",
    "docs/optim/lion.md": """
assert sorted(opt.state[model[0].weight]) == ['exp_avg'] and abs(loss.item() - 0.9966) < 2e-3
""",
    "docs/optim/lamb.md": "assert [len(g['params']) for g in opt.param_groups] == [2, 4]\n",
    "docs/optim/gradient_noise.md": """
assert state['wrappers'][-1]['class'] == 'GradientNoise'
assert state['wrappers'][-1]['state']['steps_done'] == 20
""",
    "docs/optim/registry.md": """
decay, no_decay = opt.param_groups                        # the noisy_sgd one
assert (decay['weight_decay'], no_decay['weight_decay']) == (1e-4, 0.0)
""",
    "docs/lowrank/galore.md": """
assert [len(g['params']) for g in groups] == [3, 9]       # out_proj, linear1, linear2 weights
""",
    "docs/lowrank/fira.md": _TRAINS,
    "docs/lowrank/frugal.md": _TRAINS,
    "docs/lowrank/natural_galore.md": _TRAINS,
    "docs/lowrank/qgalore.md": _TRAINS + """
from optforge.lowrank import Int8Linear
assert isinstance(model.transformer.h[0].attn, Int8Linear)
assert not isinstance(model.lm_head, Int8Linear)
projected = opt.param_groups[0]
assert projected["rank"] == 256 and len(projected["params"]) == 6   # the INT8 attn/mlp weights
""",
    "docs/optim/eightbit.md": _TRAINS + """
w = model.transformer.h[0].attn.weight
state = {k: v for k, v in opt.state[w].items() if k != "step"}
assert state["exp_avg"].dtype == torch.uint8
assert sum(v.numel() * v.element_size() for v in state.values()) / w.numel() == 2.03125
""",
    "docs/lowrank/lisa.md": """
was_active = set()
for _ in range(3 * 20):                                    # three draws of period=20
    opt.zero_grad()
    loss_fn(model(ids)).backward()
    opt.step()
    frozen = [i for i, b in enumerate(blocks) if not next(b.parameters()).requires_grad]
    assert len(frozen) == len(blocks) - 2                  # n_active=2 of 3 blocks train
    was_active |= set(range(len(blocks))) - set(frozen)
assert frozen[0] in was_active                             # it trained, then was frozen:
assert not any(opt.state.get(p) for p in blocks[frozen[0]].parameters())   # state freed
""",
    # Before AGVM's start_iter the halves' step is plain SGD on the whole batch, (gA + gB) / 2.
    "docs/optim/agvm.md": """
plain = torch.optim.SGD(twin.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
for images, targets in loader:
    plain.zero_grad()
    loss_fn(twin(images), targets).backward()
    plain.step()
for a, b in zip(model.parameters(), twin.parameters()):
    torch.testing.assert_close(a, b)
""",
    "docs/zo/deepzero.md": """
kept = sum(r * p.numel() for r, p in zip(ratios, params)) / sum(p.numel() for p in params)
assert abs(kept - 0.1) < 0.02                              # sparsity=0.9
""",
    "docs/lowrank/per_layer.md": "assert stepper.step_count == 2  # 8 micro-batches / 4\n",
    "docs/optim/conventions.md": """
assert scaler.is_enabled() and torch.isfinite(loss)
assert not torch.equal(model.weight, resumed.weight)     # the scaled step moved the weights
""",
    "docs/optim/tract.md": """
assert list(model.state_dict()) == keys                   # "state_dict keys unchanged"
assert model.conv1.layer.weight is model.conv1.weight is opt.param_groups[0]["params"][0]
assert opt.state[model.conv1.weight]["momentum_buffer"] is not None   # the SGD built before
""",
    "docs/search/bo.md": """
assert len({tuple(sorted(c.items())) for c, _ in history}) == 15    # no point repeats
""",
    "docs/search/evolution.md": "assert search.telemetry['full_evaluations'] == 300\n",
    "docs/search/map_elites.md": """
import numpy as np
assert set(history.counts) >= {"evaluations", "succeeded", "failed", "timed_out"}
assert np.array_equal(fresh.ask().values, search.ask().values)   # the resumed ask
""",
    "docs/zo/index.md": """
assert [e.shape for e in estimates] == [p.shape for p in params]
assert len(record.coefficients) == 1
""",
    "docs/zo/mezo.md": "assert len(opt.last_record.coefficients) == 1\n",
    # "on one device the trajectory equals plain MeZO's bit for bit"
    "docs/zo/offload.md": """
plain = MeZO(twin.parameters(), lr=1e-6)
for ids, labels in loader:
    plain.step(lambda: loss_fn(twin(ids).logits, labels))
assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
assert all(not torch.equal(a, b) for a, b in zip(initial, model.parameters()))   # flushed
""",
}

SLOW = {
    "docs/search/map_elites.md",  # ~2.5 min: two 1,000-iteration loops of 540, then Ray
}


def _cases() -> list:
    return [pytest.param(page, marks=[pytest.mark.slow] if page in SLOW else [], id=page)
            for page in PAGES]


def test_tables_name_real_pages():
    for table in (SETUP, SUBSTITUTE, CHECK, SLOW):
        assert set(table) <= set(PAGES)
    for page, pairs in SUBSTITUTE.items():
        code = "".join(code for _, code, _ in blocks(page))
        for old, _ in pairs:
            assert old in code, (page, old)


@pytest.fixture
def one_thread():
    """The examples are tiny: on a shared 2-core machine a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_page(page: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run ``page``'s blocks (SETUP first, CHECK last) in a fresh importable module; its dict."""
    module = types.ModuleType("docs_example")  # importable, so its classes pickle
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    namespace = module.__dict__
    exec(compile(SETUP.get(page, ""), f"<SETUP {page}>", "exec"), namespace)
    ran = 0
    for line, code, reason in blocks(page):
        if reason is not None:
            continue
        for old, new in SUBSTITUTE.get(page, []):
            code = code.replace(old, new)
        # the leading newlines make a traceback name the Markdown file's own line numbers
        exec(compile("\n" * (line - 1) + code, str(ROOT / page), "exec"), namespace)
        ran += 1
    if not ran:
        pytest.skip("every block is marked no-test")
    exec(compile(CHECK.get(page, ""), f"<CHECK {page}>", "exec"), namespace)
    return namespace


# torch.func.jvp's first use scripts its decompositions (torch's own deprecation warning)
@pytest.mark.filterwarnings("ignore:`torch.jit.script")
@pytest.mark.parametrize("page", _cases())
def test_page_runs(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_page(page, monkeypatch)


@pytest.mark.slow  # ~10 s: 24 contract checks, one of them compiles
def test_adding_pages_momentum_passes_the_conformance_suite(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    namespace = run_page("docs/optim/adding.md", monkeypatch)
    from optforge.testing import run_checks

    assert len(namespace["conformance_cases"](namespace["SPECS"])) > 10
    assert run_checks(namespace["SPECS"]) == {}


def _bench_commands() -> list[tuple[str, list[str]]]:
    """``(page, argv after "optforge bench")`` of every command in README.md and the docs: lines
    of fenced blocks (backslash continuations joined) and inline code spans, comments dropped."""
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", page.read_text())
        snippets = [line for m in fenced.finditer(text) for line in m.group(1).splitlines()]
        snippets += [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", fenced.sub("", text))]
        for s in snippets:
            if m := re.search(r"(?:^|[\s/])optforge bench(?=\s|$)(.*)", s.split("#")[0]):
                found.append((page.relative_to(ROOT).as_posix(), m.group(1).split()))
    return found


def test_bench_commands_in_the_docs_parse():
    """Every ``--flag`` of a documented ``optforge bench`` command exists on its subcommand, every
    built-in workload or submission it names is registered, and a ``run`` that names both (not a
    passing mention such as ``optforge bench run --ruleset external``) and has no placeholders
    (``...``, ``[--opt X]``, upper-case names such as DIR) parses whole, required flags included."""
    from optforge.bench.cli import COMMANDS, _Parser, add_bench_parser
    from optforge.bench.submission import list_submissions
    from optforge.bench.workloads import list_workloads

    top = _Parser(prog="optforge")
    add_bench_parser(top.add_subparsers(dest="command", parser_class=_Parser))
    bench = top._subparsers._group_actions[0].choices["bench"]
    subcommands = bench._subparsers._group_actions[0].choices
    names = {"--workloads": set(list_workloads(include_held_out=True)),
             "--submissions": set(list_submissions())}
    commands = _bench_commands()
    assert len(commands) > 20
    for page, argv in commands:
        if argv[:1] != [] and argv[0] in COMMANDS:
            command, args = argv[0], argv[1:]
        else:
            command, args = "quick", argv
        flags = {a.strip("[]").split("|")[0] for a in args if a.strip("[]").startswith("--")}
        assert flags <= set(subcommands[command]._option_string_actions), (page, argv)
        for flag, known in names.items():
            if flag in args and args.index(flag) + 1 < len(args):
                for name in args[args.index(flag) + 1].split(","):
                    assert ":" in name or "/" in name or name in known, (page, flag, name)
        complete = command != "run" or {"--workloads", "--submissions"} <= flags
        if complete and not any("..." in a or "[" in a or re.fullmatch(r"[A-Z_]+", a)
                                for a in args):
            top.parse_args(["bench", command, *args])
