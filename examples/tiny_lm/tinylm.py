"""A tiny byte-level decoder-only transformer trained on the Python standard library.

Everything here runs offline: the corpus is the ``*.py`` sources of the running Python's
standard library (``sysconfig.get_paths()["stdlib"]``), read in a fixed (sorted) file order,
as bytes (vocabulary 256). Files are split into train and validation by a fixed rule (every
``VAL_EVERY``-th file of the sorted list is validation), so the split never changes on one
machine. The encoded corpus is cached as ``.npy`` files under ``cache_dir`` (default
``examples/tiny_lm/.cache``, git-ignored, about 12 MB).

:func:`train` trains a :class:`TinyGPT` for ``schedule.total_steps`` optimizer steps (AdamW)
under any :class:`~optuna_optlaws.Schedule`, deterministically given ``config.seed``. The
loss it reports along the way (``on_eval(step, loss)``) is the mean cross-entropy (nats per
byte) on a fixed held-out set of ``config.eval_batches`` validation batches, measured right
after optimizer step ``step`` (0-based; the LR used by that step is ``schedule.lr_at(step)``),
every ``config.eval_every`` steps and at the last step. The final objective is the same loss
on a larger fixed validation set (``config.final_eval_batches`` batches).

Sizes are chosen so one run of ~600 steps takes ~10-20 s on one CPU thread; CUDA is used
when present.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from optuna_optlaws import Schedule
from optuna_optlaws.curves import Curve

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache"
VAL_EVERY = 20
"""Every 20th file (sorted order) of a corpus is held out for validation."""

CORPORA = ("stdlib", "stdlib_tests", "site_docs")
"""``stdlib``: the standard library's sources without its test suites (~12 MB).
``stdlib_tests``: only the test suites (``test/``, ``tests/``, ``idle_test/``; ~19 MB), a
second, shifted distribution for continual training. ``site_docs``: the text files
(``*.txt``, ``*.rst``, ``*.md``, ``LICENSE*``/``COPYING*``, each under 200 kB) of the installed
packages in ``site-packages``, the first ``SITE_DOCS_BYTES`` of them in sorted order: a
small, mostly natural-language corpus for fine-tuning (it depends on what is installed)."""

SITE_DOCS_BYTES = 3_000_000


# ---------------------------------------------------------------------------- data
def _is_test_path(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in ("test", "tests", "idle_test") or p.startswith("test_") for p in parts)


def corpus_files(corpus: str = "stdlib") -> list[Path]:
    """The corpus's source files, in their fixed (sorted relative path) order."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known: {CORPORA}")
    if corpus == "site_docs":
        return _site_docs()
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in filenames:
            if name.endswith(".py"):
                p = Path(dirpath) / name
                rel = p.relative_to(root).as_posix()
                if _is_test_path(rel) == (corpus == "stdlib_tests"):
                    found.append((rel, p))
    return [p for _, p in sorted(found)]


def _site_docs() -> list[Path]:
    root = Path(sysconfig.get_paths()["purelib"])
    out, total = [], 0
    for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
        is_doc = p.suffix in (".txt", ".rst", ".md") or p.name.startswith(("LICENSE", "LICENCE", "COPYING"))
        if not is_doc or not p.is_file() or "optuna_optlaws" in p.as_posix():
            continue
        size = p.stat().st_size
        if 0 < size < 200_000:
            out.append(p)
            total += size
            if total >= SITE_DOCS_BYTES:
                break
    return out


def corpus_fingerprint(files: list[Path]) -> str:
    """A short digest of a corpus's files (names and sizes): another Python or other
    installed packages give another corpus, and another cache entry."""
    digest = hashlib.sha1()
    for p in files:
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        digest.update(f"{p.name} {size}\n".encode())
    return digest.hexdigest()[:10]


@functools.cache
def corpus_tag(corpus: str) -> str:
    """:func:`corpus_fingerprint` of a corpus, computed once per process (listing
    ``site_docs`` walks the whole site-packages, about a second; every run asks for it)."""
    return corpus_fingerprint(corpus_files(corpus))


def load_corpus(corpus: str = "stdlib", cache_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) byte arrays (``uint8``) of a corpus, built once per
    :func:`corpus_tag` and cached."""
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    tag = corpus_tag(corpus)
    tr_path, va_path = cache / f"{corpus}_{tag}_train.npy", cache / f"{corpus}_{tag}_val.npy"
    if tr_path.exists() and va_path.exists():
        return np.load(tr_path), np.load(va_path)
    train_parts: list[bytes] = []
    val_parts: list[bytes] = []
    for i, p in enumerate(corpus_files(corpus)):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        (val_parts if i % VAL_EVERY == 0 else train_parts).append(data + b"\n")
    train = np.frombuffer(b"".join(train_parts), dtype=np.uint8).copy()
    val = np.frombuffer(b"".join(val_parts), dtype=np.uint8).copy()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(tr_path, train)
    np.save(va_path, val)
    return train, val


def fixed_batches(data: np.ndarray, n_batches: int, batch_size: int, context: int, seed: int) -> torch.Tensor:
    """``n_batches`` fixed batches of ``context + 1`` byte windows, shape
    ``(n_batches, batch_size, context + 1)``, drawn with their own seed."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - context - 1, size=n_batches * batch_size)
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    return torch.from_numpy(data[idx].astype(np.int64)).view(n_batches, batch_size, context + 1)


# ---------------------------------------------------------------------------- model
@dataclass(frozen=True)
class TinyLMConfig:
    """Model size, batch shape and measurement plan of one run.

    ``context`` and ``batch_size`` are in bytes and sequences: one optimizer step
    consumes ``batch_size * context`` tokens (bytes)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context: int = 64
    batch_size: int = 16
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    """Seeds the initialisation and the order of training batches."""
    eval_every: int = 25
    """Steps between held-out loss measurements."""
    eval_batches: int = 8
    """Fixed validation batches of each periodic measurement."""
    final_eval_batches: int = 64
    """Fixed validation batches of the final objective."""
    corpus: str = "stdlib"
    train_bytes: int | None = None
    """Train only on the first this-many bytes of the corpus's training part (a small
    fine-tuning set that is seen for several epochs); ``None``: all of it."""

    @property
    def tokens_per_step(self) -> int:
        """Bytes consumed per optimizer step."""
        return self.batch_size * self.context


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A pre-norm GPT over bytes: token and position embeddings, ``n_layers`` blocks,
    a tied output layer."""

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(cfg.context, cfg.d_model))
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.t()

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) of a ``(B, context + 1)`` batch."""
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))


def count_parameters(cfg: TinyLMConfig) -> int:
    """N: the number of parameters of the model ``cfg`` describes."""
    return sum(p.numel() for p in TinyGPT(cfg).parameters())


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What one run measured: held-out losses (nats/byte) at ``steps``, the LR each step
    used, the final validation loss, and whether the run diverged (non-finite loss)."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    diverged: bool = False
    seconds: float = 0.0
    model_size: int = 0
    tokens_per_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: TinyGPT, batches: torch.Tensor) -> float:
    """Mean loss (nats/byte) of ``model`` over fixed ``batches``."""
    was_training = model.training
    model.eval()
    total = 0.0
    for b in batches:
        total += float(model.loss(b))
    model.train(was_training)
    return total / len(batches)


def train(
    schedule: Schedule,
    cfg: TinyLMConfig | None = None,
    *,
    on_eval: Callable[[int, float], None] | None = None,
    device: torch.device | str | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    return_state: bool = False,
    cache_dir: Path | str | None = None,
) -> TrainResult | tuple[TrainResult, dict[str, torch.Tensor]]:
    """Train a fresh (or ``init_state``-initialised) :class:`TinyGPT` for
    ``schedule.total_steps`` AdamW steps, the LR of step ``t`` being ``schedule.lr_at(t)``.

    ``on_eval(step, loss)`` is called at every periodic measurement (it may raise, e.g.
    ``optuna.TrialPruned``, to stop the run). A non-finite training or held-out loss stops
    the run as diverged (``final_loss`` NaN). With ``return_state`` the trained weights
    are returned too (for continual training)."""
    cfg = cfg or TinyLMConfig()
    dev = torch.device(device) if device is not None else default_device()
    t0 = time.perf_counter()
    train_data, val_data = load_corpus(cfg.corpus, cache_dir)
    if cfg.train_bytes is not None:
        train_data = train_data[: cfg.train_bytes]
    eval_b = fixed_batches(val_data, cfg.eval_batches, 32, cfg.context, seed=1234).to(dev)
    torch.manual_seed(cfg.seed)
    model = TinyGPT(cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "pos")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.0,
        betas=(0.9, 0.95),
    )
    sched = schedule.to_torch(opt)
    rng = np.random.default_rng(cfg.seed + 7919)
    offsets = np.arange(cfg.context + 1)[None, :]
    total = schedule.total_steps
    res = TrainResult(
        model_size=sum(p.numel() for p in model.parameters()),
        tokens_per_step=cfg.tokens_per_step,
        config=asdict(cfg),
    )
    for step in range(total):
        starts = rng.integers(0, len(train_data) - cfg.context - 1, size=cfg.batch_size)
        batch = torch.from_numpy(train_data[starts[:, None] + offsets].astype(np.int64)).to(dev)
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if not math.isfinite(float(loss.detach())):
            res.diverged = True
            res.steps.append(step)
            res.losses.append(math.nan)
            if on_eval is not None:
                on_eval(step, math.nan)
            break
        if (step + 1) % cfg.eval_every == 0 or step == total - 1:
            val = evaluate(model, eval_b)
            res.steps.append(step)
            res.losses.append(val)
            if not math.isfinite(val):
                res.diverged = True
            if on_eval is not None:
                on_eval(step, val)
            if res.diverged:
                break
    if not res.diverged:
        final_b = fixed_batches(val_data, cfg.final_eval_batches, 32, cfg.context, seed=4321).to(dev)
        res.final_loss = evaluate(model, final_b)
    res.seconds = time.perf_counter() - t0
    if return_state:
        return res, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return res


@torch.no_grad()
def loss_of_state(state: dict[str, torch.Tensor], cfg: TinyLMConfig, cache_dir: Path | str | None = None) -> float:
    """Final-objective loss (nats/byte) of weights ``state`` on ``cfg.corpus``'s fixed
    held-out set (the same ``cfg.final_eval_batches`` batches :func:`train` ends with)."""
    model = TinyGPT(cfg)
    model.load_state_dict(state)
    _, val = load_corpus(cfg.corpus, cache_dir)
    return evaluate(model, fixed_batches(val, cfg.final_eval_batches, 32, cfg.context, seed=4321))


def pretrained(schedule: Schedule, cfg: TinyLMConfig, cache_dir: Path | str | None = None) -> tuple[TrainResult, dict]:
    """Train (or load from the cache) a run whose weights later runs start from: the
    result and the final weights, cached under ``cache_dir`` keyed by schedule, config and
    the corpus's :func:`corpus_fingerprint`."""
    import json

    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    text = schedule.to_json() + json.dumps(asdict(cfg), sort_keys=True) + corpus_tag(cfg.corpus)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache / f"pretrained_{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=False)
        return TrainResult(**saved["result"]), saved["state"]
    res, state = train(schedule, cfg, return_state=True, cache_dir=cache_dir)  # type: ignore[misc]
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"result": asdict(res), "state": state}, path)
    return res, state


# ---------------------------------------------------------------------------- curves files
def curve_of(
    run_id: str,
    schedule: Schedule,
    res: TrainResult,
    batch_size: int,
    resume_from: str | None = None,
    resume_step: int | None = None,
) -> Curve:
    """A run as a :class:`Curve` whose schedule is given by its LR at every optimizer step
    (so a curves file's piecewise-linear LR is exact at every step, whatever the family)."""
    grid = np.arange(schedule.total_steps, dtype=np.float64)
    return Curve(
        run_id=run_id,
        schedule=Schedule.from_knots(grid, schedule.lr_at(grid)),
        steps=np.asarray(res.steps, dtype=np.int64),
        losses=np.asarray(res.losses, dtype=np.float64),
        model_size=float(res.model_size),
        tokens_per_step=float(res.tokens_per_step),
        batch_size=float(batch_size),
        resume_from=resume_from,
        resume_step=resume_step,
    )


