"""One training step of each ar2 stage against sentence-transformers' trainers, side by side.

Each stage is timed on one fixed batch of SciFact training queries, drawn as ``ar2 train``
draws it (a positive and ``n_neg`` negatives per query, documents cut to the preset's
``train_doc_max_length``), with the shapes and learning rates of a preset (default ``quick``):

* ``g0``: ar2's ``steps.contrastive_retriever_loss`` + ``Stepper`` against
  ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss``;
* ``ranker``: ``steps.ranker_loss`` + ``Stepper`` against ``CrossEncoderTrainer`` + ST's
  listwise ``MultipleNegativesRankingLoss`` over the same group (its in-batch sampling off);
* ``ar2-retriever``: ``steps.ar2_retriever_step_loss`` + ``Stepper`` (separate towers, as
  AR2 trains them) against ``CrossEncoder.predict`` (the teacher's scores of the batch) +
  ``SentenceTransformerTrainer`` + ``DistillKLDivLoss`` (one shared tower).

Both sides see the same strings, token limits, batch, optimiser settings (AdamW, learning rate,
linear schedule, clipping; ST keeps its trainer's default AdamW kernel, the fused one, measured
within 4% of the plain one ar2 uses) and precision (``--precision``; ``auto`` is bf16 autocast
where the CPU has AVX512-BF16/AMX, as ar2 decides). A step is timed from the end of one
optimiser update to the end of the next, so tokenisation and the trainer's data loading count
on both sides. The systems run interleaved (ar2, its variants, ST, ar2, ...) so that drift hits
all of them. The ranker stage has the shapes of the AR2 rounds' ranker steps (``quick``'s D0
groups are half as large).

Each stage also reports its achieved matmul rate: 6 x non-embedding parameters x real
(unpadded) tokens per trained forward-backward, plus 2 x parameters x tokens for a
forward-only teacher, divided by the step time, against the peak of a large fp32 and bf16
matmul measured in the same run.

``--profile STAGE`` instead runs a few ar2 steps of that stage under ``torch.profiler`` and
prints where the time goes (top operators, and matmul vs the rest).

Run from the repository root (bash scripts/setup.sh installs what it needs):

    .venv/bin/python benchmarks/train_step.py --repeats 3 --steps 2 --out step.json \
        --variant model-dropout:attention_dropout=none,fast_dropout=false
    .venv/bin/python benchmarks/train_step.py --profile g0 --set attention_dropout=none
    .venv/bin/python benchmarks/train_step.py --profile g0 --set sdpa=math

Every ar2 system (``ar2``: the preset; each ``--variant NAME:KEY=VALUE,...``: the preset with
those overrides) and ST are timed in turn, ``--steps`` steps each per round, ``--repeats``
rounds. A variant may also set ``threads=N``: its steps run with N intra-op threads
(``torch.set_num_threads``), the rest with torch's default; and ``sdpa=math`` or
``sdpa=flash``: its steps run with that scaled-dot-product attention kernel only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import hardware, loadavg  # noqa: E402

STAGES = ("g0", "ranker", "ar2-retriever")
TARGET = 1.5  # acceptance: each ar2 step at least this many times ST's speed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/scifact", help="BEIR folder (default: %(default)s)")
    p.add_argument("--preset", default="quick", help="shapes and rates of (default: quick)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (default: 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an ar2 config override for every ar2 variant (repeatable)")  # fmt: skip
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="another ar2 system, timed beside the others: the preset with these "
                        "overrides (e.g. fast:attention_dropout=0,fast_dropout=true)")  # fmt: skip
    p.add_argument("--no-st", action="store_true", help="time ar2 only")
    p.add_argument("--profile", choices=STAGES, help="profile ar2's step of this stage instead")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be positive")
    return args


# ---------------------------------------------------------------------------------------------
# the batch


def load_config(preset: str, overrides: list[str]) -> Any:
    from ar2._overrides import apply_overrides
    from ar2.config import load_ar2_config, load_config_file, preset_path

    data = apply_overrides(load_config_file(preset_path(preset)), overrides)
    return load_ar2_config(data, preset)


def fixed_batch(data_dir: str, stage: Any, seed: int) -> Any:
    """``stage.batch_size`` training queries, each with a positive and ``stage.n_neg``
    documents drawn at random (their lengths are what a step's cost depends on)."""
    from ar2.data.beir import load_beir
    from ar2.train.steps import Batch

    corpus, queries, qrels = load_beir(data_dir, "train")
    rng = random.Random(seed)
    picked = rng.sample([q for q in queries if qrels.get(q.id)], stage.batch_size)
    by_id = {d.id: d for d in corpus}
    docs = []
    for q in picked:
        docs.append(by_id[sorted(qrels[q.id])[0]])
        docs.extend(rng.sample(corpus, stage.n_neg))
    return Batch(picked, docs)


def groups(batch: Any) -> list[list[Any]]:
    m = batch.group_size
    return [batch.docs[i * m : (i + 1) * m] for i in range(len(batch.queries))]


# ---------------------------------------------------------------------------------------------
# ar2's side


def ar2_step(stage: str, cfg: Any, batch: Any, precision: str) -> tuple[Callable[[], float], Any]:
    """A function running one ar2 optimiser step of ``stage`` on ``batch``, and the models."""
    from ar2.encoders import BiEncoder, CrossEncoder
    from ar2.train import steps
    from ar2.train.loop import Stepper, seed_step
    from ar2.train.stage import for_training, model_of
    from ar2.train.teacher import Teacher

    pair = steps.train_pair_length(cfg)
    if stage == "ranker":
        ranker = CrossEncoder.load(None, max_length=pair, precision=precision)
        stepper = Stepper(ranker.model, cfg.ranker, 1000)
        ranker.model.train()
        loss: Callable[[], Any] = lambda: steps.ranker_loss(ranker, batch, pair)  # noqa: E731
        models: dict[str, Any] = {"ranker": ranker}
    else:
        encoder = BiEncoder.load(None, query_max_length=cfg.query_max_length, precision=precision)
        if stage == "g0":
            stage_cfg = cfg.g0
            loss = lambda: steps.contrastive_retriever_loss(  # noqa: E731
                encoder, batch, cfg.scale, cfg.train_doc_max_length
            )
            models = {"retriever": encoder}
        else:
            stage_cfg = cfg.retriever
            encoder.untie()
            ranker = CrossEncoder.load(None, max_length=pair, precision=precision)
            teacher = Teacher(ranker, cfg.teacher)  # AR2's: the ranker's logits
            loss = lambda: steps.ar2_retriever_step_loss(encoder, teacher, batch, cfg)  # noqa: E731
            models = {"retriever": encoder, "ranker": ranker}
        stepper = Stepper(model_of(encoder), stage_cfg, 1000)
        model_of(encoder).train()
    for model in models.values():  # the run's dropout settings, as train_stage applies them
        if model is not models.get("ranker") or stage == "ranker":
            role = "ranker" if stage == "ranker" else "retriever"
            for_training(model.model if stage == "ranker" else model_of(model), cfg, role)
    count = iter(range(10**9))

    def one() -> float:
        seed_step(cfg.seed, stage, next(count))
        return stepper.step(loss())

    return one, models


def with_threads(n: int, step: Callable[[], float]) -> Callable[[], float]:
    """``step`` run with ``n`` intra-op threads (the variant setting ``threads=N``)."""
    import torch

    def run() -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return step()
        finally:
            torch.set_num_threads(before)

    return run


def with_sdpa(backend: str, step: Callable[[], float]) -> Callable[[], float]:
    """``step`` with torch's scaled-dot-product attention limited to ``backend`` (the variant
    setting ``sdpa=math`` or ``sdpa=flash``): which attention kernel the encoders run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def run() -> float:
        with sdpa_kernel([chosen]):
            return step()

    return run


RUNTIME_KEYS = ("threads", "sdpa")  # variant settings that are not config fields


def _is_runtime(override: str) -> bool:
    return override.replace(" ", "").split("=", 1)[0] in RUNTIME_KEYS


def _runtime(overrides: list[str], key: str) -> str | None:
    """The last ``key=VALUE`` among a variant's settings (not a config field)."""
    found = [x.split("=", 1)[1].strip() for x in overrides
             if x.replace(" ", "").split("=", 1)[0] == key]  # fmt: skip
    return found[-1] if found else None


def _threads(overrides: list[str]) -> int | None:
    """The last ``threads=N`` among a variant's settings (not a config field)."""
    found = _runtime(overrides, "threads")
    return int(found) if found else None


def time_ar2(step: Callable[[], float], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------
# sentence-transformers' side


def st_runner(
    stage: str, cfg: Any, batch: Any, bf16: bool, enc: Any, seed: int
) -> Callable[[int], list[float]]:
    """A function running ``n`` steps of ST's trainer on ``batch`` and returning their times."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer, losses
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from transformers import TrainerCallback

    from ar2.encoders import default_model_path
    from ar2.train import steps

    path = str(default_model_path())
    query_text = getattr(enc, "query_text", lambda q: q.text)  # the ranker has no query prefix
    queries = [query_text(q) for q in batch.queries]
    docs = [[enc.doc_text(d) for d in g] for g in groups(batch)]
    pair = steps.train_pair_length(cfg)
    stage_cfg = {"g0": cfg.g0, "ranker": cfg.ranker, "ar2-retriever": cfg.retriever}[stage]
    columns: dict[str, list[Any]] = {"query": queries}
    for j in range(batch.group_size):
        columns["positive" if j == 0 else f"negative_{j}"] = [g[j] for g in docs]
    teacher = None
    if stage == "ranker":
        model: Any = STCrossEncoder(path, num_labels=1, max_length=pair, device="cpu")
        loss: Any = _GroupCE(model, activation_fn=None, scale=1.0)
    else:
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = cfg.train_doc_max_length or cfg.doc_max_length
        if stage == "g0":
            loss = losses.MultipleNegativesRankingLoss(model, scale=cfg.scale)
        else:
            teacher = STCrossEncoder(path, num_labels=1, max_length=pair, device="cpu")
            loss = losses.DistillKLDivLoss(model, temperature=cfg.kd_temperature)
    times: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter())

    def run(n: int) -> list[float]:
        rows = dict(columns)
        extra = 0.0
        if teacher is not None:  # the teacher scores this batch's pairs, as AR2 does each step
            start = time.perf_counter()
            pairs = [(q, d) for q, g in zip(queries, docs) for d in g]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                scores = teacher.predict(pairs, batch_size=len(pairs), activation_fn=None)
            extra = time.perf_counter() - start
            rows["label"] = torch.tensor(scores).view(len(queries), -1).tolist()
        dataset = datasets.Dataset.from_dict({k: v * (n + 1) for k, v in rows.items()})
        trainer = _trainer(stage, model, loss, dataset, stage_cfg, n + 1, bf16, seed, Clock())
        times.clear()
        trainer.train()
        return [b - a + extra for a, b in zip(times, times[1:])]

    return run


class _GroupCE:  # made a torch module lazily: sentence-transformers is imported on first use
    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from sentence_transformers.cross_encoder import losses as ce_losses

        class GroupCE(ce_losses.MultipleNegativesRankingLoss):  # type: ignore[misc]
            """Listwise CE over each query's own group only (ar2's ranker loss), no in-batch
            negatives: ST's loss with its in-batch sampling turned off."""

            def get_in_batch_negatives(self, anchors: Any, candidates: Any) -> Any:
                return iter(())

        return GroupCE(*args, **kwargs)


def _trainer(stage, model, loss, dataset, stage_cfg, steps, bf16, seed, clock) -> Any:  # type: ignore[no-untyped-def]
    from torch.utils.data import BatchSampler, SequentialSampler

    if stage == "ranker":
        from sentence_transformers.cross_encoder import CrossEncoderTrainer as Trainer
        from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as Args
    else:
        from sentence_transformers import SentenceTransformerTrainer as Trainer
        from sentence_transformers import SentenceTransformerTrainingArguments as Args

    class InOrder(Trainer):  # type: ignore[misc,valid-type]
        """The same batch every step: ar2's side also repeats one batch."""

        def get_batch_sampler(self, dataset: Any, batch_size: int, drop_last: bool, *a: Any,
                              **k: Any) -> Any:  # fmt: skip
            return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)

    args = Args(
        output_dir=tempfile.mkdtemp(prefix="ar2-train-step-st-"), max_steps=steps,
        learning_rate=stage_cfg.lr,
        per_device_train_batch_size=stage_cfg.batch_size, warmup_ratio=stage_cfg.warmup_ratio,
        weight_decay=stage_cfg.weight_decay, max_grad_norm=stage_cfg.max_grad_norm,
        bf16=bf16, use_cpu=True, save_strategy="no", report_to=[], logging_strategy="no",
        dataloader_num_workers=0, seed=seed, disable_tqdm=True,
    )  # fmt: skip
    return InOrder(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[clock])


# ---------------------------------------------------------------------------------------------
# work and peaks


def non_embedding_params(model: Any) -> int:
    """Parameters of the transformer layers (what every token multiplies through)."""
    core = getattr(model, "base_model", model)
    return sum(p.numel() for p in core.encoder.parameters())


def stage_flops(stage: str, cfg: Any, batch: Any, models: dict[str, Any]) -> tuple[float, dict]:
    """Matmul work of one step: 6 N T for trained passes, 2 N T for the frozen teacher."""
    from ar2.train import steps

    pair = steps.train_pair_length(cfg)
    tokens: dict[str, int] = {}
    if "ranker" in models:
        ranker = models["ranker"]
        enc = ranker.tokenizer(
            [q.text for q in batch.queries for _ in range(batch.group_size)],
            [ranker.doc_text(d) for d in batch.docs], truncation=True, max_length=pair,
        )  # fmt: skip
        tokens["pairs"] = sum(map(len, enc["input_ids"]))
    if "retriever" in models:
        encoder = models["retriever"]
        tok = encoder.tokenizer
        q = tok([encoder.query_text(x) for x in batch.queries], truncation=True,
                max_length=encoder.config.query_max_length)["input_ids"]  # fmt: skip
        d = tok([encoder.doc_text(x) for x in batch.docs], truncation=True,
                max_length=cfg.train_doc_max_length or cfg.doc_max_length)["input_ids"]  # fmt: skip
        tokens["queries"], tokens["docs"] = sum(map(len, q)), sum(map(len, d))
    n = non_embedding_params(next(iter(models.values())).model if stage == "ranker" else
                             models["retriever"].doc_model)  # fmt: skip
    if stage == "ranker":
        flops = 6 * n * tokens["pairs"]
    elif stage == "g0":
        flops = 6 * n * (tokens["queries"] + tokens["docs"])
    else:
        flops = 6 * n * (tokens["queries"] + tokens["docs"]) + 2 * n * tokens["pairs"]
    padded = _padded_tokens(stage, cfg, batch, models)
    return float(flops), {"non_embedding_params": n, "real_tokens": tokens, "padded": padded}


def _padded_tokens(stage: str, cfg: Any, batch: Any, models: dict[str, Any]) -> dict[str, int]:
    """Tokens as the forward passes see them (each batch padded to its longest row)."""
    out = {}
    for name, texts in _texts(stage, cfg, batch, models).items():
        tok, limit, args = texts
        ids = tok(*args, truncation=True, max_length=limit)["input_ids"]
        out[name] = len(ids) * max(map(len, ids))
    return out


def _texts(stage: str, cfg: Any, batch: Any, models: dict[str, Any]) -> dict[str, Any]:
    from ar2.train import steps

    found = {}
    if "retriever" in models:
        e = models["retriever"]
        found["queries"] = (e.tokenizer, e.config.query_max_length,
                            ([e.query_text(q) for q in batch.queries],))  # fmt: skip
        found["docs"] = (e.tokenizer, cfg.train_doc_max_length or cfg.doc_max_length,
                         ([e.doc_text(d) for d in batch.docs],))  # fmt: skip
    if "ranker" in models:
        r = models["ranker"]
        qs = [q.text for q in batch.queries for _ in range(batch.group_size)]
        found["pairs"] = (r.tokenizer, steps.train_pair_length(cfg),
                          (qs, [r.doc_text(d) for d in batch.docs]))  # fmt: skip
    return found


def matmul_peaks(seconds: float = 1.5) -> dict[str, float]:
    """GFLOP/s of the best of a few 2048^3 and model-shaped (8192x384x1536) matmuls."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for m, k, n in ((2048, 2048, 2048), (8192, 384, 1536)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 2:
                a @ b
                reps += 1
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
        peaks[name] = round(best, 1)
    return peaks


# ---------------------------------------------------------------------------------------------
# the run


def variant_sets(args: argparse.Namespace) -> dict[str, list[str]]:
    """``name -> overrides`` of the ar2 systems: ``ar2`` (``--set``) and each ``--variant``."""
    found = {"ar2": list(args.set)}
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        found[name] = [*args.set, *filter(None, sets.split(","))]
    return found


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from ar2.encoders._runtime import use_bf16

    sets = variant_sets(args)
    threads = {name: _threads(overrides) for name, overrides in sets.items()}
    configs = {name: load_config(args.preset, [x for x in overrides if not _is_runtime(x)])
               for name, overrides in sets.items()}  # fmt: skip
    cfg = configs["ar2"]
    bf16 = use_bf16(args.precision, "cpu")
    print(f"precision {args.precision}: {'bf16 autocast' if bf16 else 'fp32'}", flush=True)
    peaks = matmul_peaks()
    print(f"matmul peak GFLOP/s: {peaks}", flush=True)
    results: dict[str, Any] = {"peaks_gflops": peaks, "bf16": bf16, "variants": sets}
    results["stages"] = {}
    for stage in args.stages:
        stage_cfg = {"g0": cfg.g0, "ranker": cfg.ranker, "ar2-retriever": cfg.retriever}[stage]
        batch = fixed_batch(args.data, stage_cfg, args.seed)
        systems, models = {}, {}
        for name, config in configs.items():
            systems[name], models = ar2_step(stage, config, batch, args.precision)
            n_threads = threads[name]
            if n_threads:
                systems[name] = with_threads(n_threads, systems[name])
            sdpa = _runtime(sets[name], "sdpa")
            if sdpa:
                systems[name] = with_sdpa(sdpa, systems[name])
        flops, work = stage_flops(stage, cfg, batch, models)
        enc = models.get("retriever") or models["ranker"]
        if not args.no_st:
            run_st = st_runner(stage, cfg, batch, bf16, enc, args.seed)
            systems["st"] = lambda: run_st(1)[0]  # noqa: B023
        times: dict[str, list[float]] = {name: [] for name in systems}
        for system in systems.values():
            system()  # warm-up
        for rep in range(args.repeats):
            for name, system in systems.items():
                times[name] += run_st(args.steps) if name == "st" else time_ar2(system, args.steps)
            last = "  ".join(f"{k} {_fmt(v[-args.steps :])}" for k, v in times.items())
            print(f"{stage} round {rep + 1}/{args.repeats}: {last}  (load {loadavg()})", flush=True)
        results["stages"][stage] = _summary(stage_cfg, times, flops, work, peaks, bf16)
        print(json.dumps(results["stages"][stage]), flush=True)
    return results


def _summary(stage_cfg: Any, times: dict[str, list[float]], flops: float, work: dict,
             peaks: dict[str, float], bf16: bool) -> dict[str, Any]:  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items() if v}
    row: dict[str, Any] = {
        "batch": {"queries": stage_cfg.batch_size, "group": 1 + stage_cfg.n_neg},
        "step_s": {k: round(v, 3) for k, v in med.items()},
        "steps_per_s": {k: round(1 / v, 4) for k, v in med.items()},
        "all_step_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "tflop_per_step": round(flops / 1e12, 4),
        "work": work,
        "achieved_gflops": {k: round(flops / v / 1e9, 1) for k, v in med.items()},
    }
    own = "bf16" if bf16 else "fp32"
    row["share_of_own_precision_peak"] = {
        k: round(v / peaks[own], 3) for k, v in row["achieved_gflops"].items()
    }
    row["share_of_bf16_peak"] = {
        k: round(v / peaks["bf16"], 3) for k, v in row["achieved_gflops"].items()
    }
    if "st" in med:
        row["speedup_vs_st"] = {k: round(med["st"] / v, 3) for k, v in med.items() if k != "st"}
    return row


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "] s"


def profile(args: argparse.Namespace) -> None:
    """Where ar2's step of one stage spends its time: torch.profiler over 3 steps."""
    import torch

    cfg = load_config(args.preset, [x for x in args.set if not _is_runtime(x)])
    stage_cfg = {"g0": cfg.g0, "ranker": cfg.ranker, "ar2-retriever": cfg.retriever}[args.profile]
    ours, _ = ar2_step(args.profile, cfg, fixed_batch(args.data, stage_cfg, args.seed),
                       args.precision)  # fmt: skip
    n_threads, sdpa = _threads(args.set), _runtime(args.set, "sdpa")
    if n_threads:
        ours = with_threads(n_threads, ours)
    if sdpa:
        ours = with_sdpa(sdpa, ours)
    ours()
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts, record_shapes=False) as prof:
        wall = time_ar2(ours, args.steps)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=30))
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if _is_matmul(e.key))
    print(f"wall per step {statistics.median(wall):.2f} s; self CPU time in matmuls "
          f"{mm / total:.1%} of {total / 1e6 / args.steps:.2f} s per step")  # fmt: skip


def _is_matmul(name: str) -> bool:
    return any(k in name for k in ("mm", "matmul", "linear", "baddbmm", "bmm", "addmm"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile:
        profile(args)
        return
    started = dt.datetime.now(dt.UTC)
    results = measure(args)
    record = {
        "command": " ".join(["benchmarks/train_step.py", *sys.argv[1:]]),
        "date": started.isoformat(timespec="seconds"),
        "hardware": hardware(),
        "preset": args.preset,
        "overrides": args.set,
        **results,
    }
    print(markdown(record))
    if args.out:
        from ar2._io import atomic_write_json

        atomic_write_json(args.out, record)


def markdown(record: dict[str, Any]) -> str:
    hw = record["hardware"]
    lines = [
        f"CPU: {hw['cpu']} ({hw['cpus_usable']} usable cores; bf16 flags: "
        f"{', '.join(hw['bf16_flags']) or 'none'}); torch {hw['torch']}, "
        f"sentence-transformers {hw['sentence_transformers']}; "
        f"{'bf16 autocast' if record['bf16'] else 'fp32'}",
        f"matmul peak: fp32 {record['peaks_gflops']['fp32']} GFLOP/s, "
        f"bf16 {record['peaks_gflops']['bf16']} GFLOP/s",
        "ar2 systems: "
        + "; ".join(
            f"`{k}`: {', '.join(v) or 'the preset'}" for k, v in record["variants"].items()
        ),
        "",
        "| stage | batch | system | s/step | speed vs ST | TFLOP/step | GFLOP/s | share of peak |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for stage, row in record["stages"].items():
        b = row["batch"]
        for name, seconds in row["step_s"].items():
            speed = row.get("speedup_vs_st", {}).get(name)
            lines.append(
                f"| {stage} | {b['queries']} x {b['group']} | {name} | {seconds:.2f} | "
                f"{'-' if speed is None else f'{speed:.2f}x'} | {row['tflop_per_step']:.3f} | "
                f"{row['achieved_gflops'][name]:.0f} | "
                f"{row['share_of_own_precision_peak'][name]:.0%} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
