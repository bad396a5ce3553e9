"""The ``ar2`` command: a thin adapter from flags to library calls, one function per subcommand.

Heavy libraries are imported inside the subcommand functions, so ``ar2 --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ar2 import __version__
from ar2._typed import non_negative_int, port_number, positive_int, unit_fraction
from ar2.config import (
    BACKENDS,
    INDEX_KINDS,
    INDEX_PRESETS,
    INDEX_QUANTIZERS,
    PRECISIONS,
    RECIPES,
    STORES,
    AR2Config,
    IndexConfig,
    PretrainConfig,
    preset_path,
)
from ar2.errors import Ar2Error, os_error_message

log = logging.getLogger("ar2")


def cmd_index(args: argparse.Namespace) -> int:
    """Build a BM25 or dense index of a BEIR corpus into ``--out``."""
    from ar2._outdir import claim
    from ar2.data.beir import load_corpus

    file = Path(args.data_dir) / "corpus.jsonl"
    extra = {"data": str(Path(args.data_dir).resolve())}
    config = _index_config(args) if args.kind == "dense" else None  # options before reading
    if args.kind == "sparse" and not args.model:
        raise Ar2Error("ar2 index --kind sparse needs --model, a sparse encoder folder. Fix: "
                       "add --model PATH (no sparse model is bundled)")  # fmt: skip
    milvus = _milvus_target(args, config)
    with claim(args.out, "index", [args.data_dir, args.model], args.overwrite) as out:
        if args.kind == "sparse":
            count = _index_sparse(args, file, extra, out)
        elif config is None:
            from ar2.index import BM25Index

            corpus = load_corpus(file)
            index = BM25Index.build(corpus, source=str(file))
            index.save(out, extra, docs=corpus, overwrite=args.overwrite)
            count = len(corpus)
        else:
            count = _index_dense(args, file, config, extra, out, milvus)
    where = f" (Milvus collection {milvus.collection})" if milvus else ""
    print(f"wrote {args.kind} index of {count} documents to {args.out}{where}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Copy a run's (or an index folder's) dense index into a Milvus collection."""
    from ar2._outdir import claim
    from ar2.index import read_manifest
    from ar2.index.dense import export

    source = Path(args.path)
    if not (source / "manifest.json").is_file() and (source / "index").is_dir():
        source = source / "index"  # a run folder: its final index
    if read_manifest(source).get("kind") != "dense":
        raise Ar2Error(f"{source}: not a dense index. Fix: give a run folder or an `ar2 index "
                       "--kind dense` folder")  # fmt: skip
    config = _index_config(args)
    milvus = _milvus_target(args, config)
    with claim(args.out, "index", [source], args.overwrite) as out:
        count = export(source, out, milvus, config, args.overwrite)
    print(f"exported {count} documents of {source} to {args.out} "
          f"(Milvus collection {milvus.collection})")  # fmt: skip
    return 0


def _milvus_target(args: argparse.Namespace, config: IndexConfig | None) -> Any:
    """Where ``--store milvus`` puts the index (``None`` for ``--store faiss``), checked
    before anything is read."""
    if args.store != "milvus":
        if args.uri or args.collection:
            raise Ar2Error("--uri and --collection name a Milvus store. Fix: add --store milvus")
        return None
    from ar2._optional import require
    from ar2.index import milvus

    if config is None:
        raise Ar2Error(f"--store milvus holds dense vectors, not a {args.kind} index. Fix: "
                       "--kind dense, or drop --store")  # fmt: skip
    try:
        require("pymilvus", extra="milvus")
    except ImportError as err:
        raise Ar2Error(f"--store milvus: {err}") from None
    milvus.check_config(config)
    uri = args.uri and (args.uri if milvus.remote(args.uri) else str(Path(args.uri).resolve()))
    if uri and not milvus.remote(uri) and Path(uri).is_relative_to(Path(args.out).resolve()):
        raise Ar2Error(f"--uri {args.uri} is inside --out {args.out}, which the build "
                       "replaces. Fix: drop --uri (the store then goes inside --out), or give "
                       "a path outside it")  # fmt: skip
    if config.preset != "auto":
        milvus.check_lite(milvus.index_params(config.preset, 1, 1, config)[0], uri)
    name = milvus.check_collection_name(args.collection or milvus.default_collection(args.out))
    return milvus.MilvusTarget(uri and milvus.check_uri(uri), name)


def _index_dense(
    args: argparse.Namespace, file: Path, config: IndexConfig, extra: dict[str, str], out: Path,
    milvus: Any = None,
) -> int:  # fmt: skip
    """Encode and index ``file``'s documents into ``out`` (or the Milvus collection that
    ``milvus`` names); returns how many."""
    from ar2.data.beir import iter_corpus
    from ar2.encoders import BiEncoder
    from ar2.index.dense import index_corpus
    from ar2.index.factory import check_factory

    # the texts are streamed twice (encoding, then stored in the index), never held: a first
    # pass checks the whole file and keeps only the ids, before hours of encoding
    ids = [_fits(d, file, line) if milvus else d.id for line, d in enumerate(iter_corpus(file), 1)]
    encoder = BiEncoder.load(args.model, precision=args.precision)
    check_factory(config, len(ids), encoder.dim)
    log.info("encoding %d documents with %s", len(ids), encoder.source)
    index_corpus(encoder, lambda: iter_corpus(file, warn=False), ids, out, config, extra,
                 store_docs=True, overwrite=args.overwrite, milvus=milvus)  # fmt: skip
    if encoder.cuts["documents"].cut:
        fix = "a model that takes longer inputs, if the ends of documents matter"
        log.warning("%s (recorded in the manifest). Fix: %s", encoder.truncation(), fix)
    return len(ids)


def _fits(doc: Any, file: Path, line: int) -> str:
    """``doc``'s id, once its fields fit a Milvus collection's."""
    from ar2.index.milvus import check_sizes

    check_sizes(doc.id, doc.title, doc.text, where=f"{file}:{line}: document")
    return str(doc.id)


def _index_sparse(args: argparse.Namespace, file: Path, extra: dict[str, str], out: Path) -> int:
    """Encode ``file``'s documents with the sparse encoder ``--model`` into a Seismic index in
    ``out``; returns how many."""
    from ar2.data.beir import load_corpus
    from ar2.encoders import sparse
    from ar2.index.sparse import index_corpus

    model = sparse.load(args.model)  # refused before the corpus is read if it is no sparse one
    corpus = load_corpus(file)
    log.info("encoding %d documents with %s", len(corpus), args.model)
    index = index_corpus(model, corpus)
    encoder = sparse.describe(args.model)
    index.save(out, extra | {"encoder": encoder}, docs=corpus, overwrite=args.overwrite)
    return len(corpus)


def _index_config(args: argparse.Namespace) -> IndexConfig:
    """The dense index settings of ``ar2 index``, checked before anything is read."""
    try:
        return IndexConfig(
            args.preset, args.factory, ram_budget_gb=args.ram_budget_gb, refine=args.refine,
            quantize=args.quantize,
        )  # fmt: skip
    except ValueError as err:
        raise Ar2Error(f"ar2 index: {err}. Fix: see `ar2 index --help`") from err


def cmd_search(args: argparse.Namespace) -> int:
    """Print the top hits of one query against an index folder."""
    from ar2.encoders.onnx_runtime import resolve_backend
    from ar2.pipeline import CrossEncoderRanker, SearchPipeline, fetched
    from ar2.retrievers import documents, from_folder

    backend = args.backend
    resolve_backend(backend)  # before any loading
    [retriever] = from_folder(args.index_dir, backend=backend).values()  # the index's own kind
    docs = documents(args.index_dir, retriever)
    ranker = None
    if args.reranker:
        from ar2.encoders import CrossEncoder

        ranker = CrossEncoderRanker(CrossEncoder.load(args.reranker, backend=backend), docs)
    hits = SearchPipeline(retriever, ranker, args.rerank_k).search(args.query, args.k)
    found = fetched(docs, [h.doc_id for h in hits])
    for rank, hit in enumerate(hits, start=1):
        title = found[hit.doc_id].title if hit.doc_id in found else ""
        print(f"{rank:>3}  {hit.score:>9.4f}  {hit.doc_id}  {title[:80]}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate systems on a split and write report.md, report.json and a plot."""
    from ar2.comparison import EvalJob, run_eval
    from ar2.report import format_table

    job = EvalJob(
        data_dir=Path(args.data_dir),
        split=args.split,
        systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()),
        out=Path(args.out),
        measures=tuple(m.strip() for m in args.measures.split(",") if m.strip()),
        depth=args.depth,
        reranker=args.reranker,
        rerank_k=args.rerank_k,
        fusion_weight=args.fusion_weight,
        precision=args.precision,
        index=IndexConfig(preset=args.preset),
        overwrite=args.overwrite,
    )
    results = run_eval(job)
    print(format_table(results))
    print(f"\nreport: {job.out / 'report.md'} (report.json, report.png, per_query.tsv, runs/)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """AR2 co-training on a BEIR folder with a train split."""
    from ar2 import distributed
    from ar2._outdir import check_inputs, resolve
    from ar2.report import format_table
    from ar2.train.ar2 import run_ar2

    cfg = _train_config(args)
    warm = Path(args.warm_start) if args.warm_start else None
    out = resolve(args.out)
    if args.config and Path(args.config).resolve() != out / "config.json":  # a run's own config
        check_inputs(out, [args.config])  # resumes it; run_ar2 checks the other inputs
    w = distributed.init_from_env()  # under torchrun: one process of several
    try:
        results = run_ar2(
            Path(args.data_dir), Path(args.out), cfg, args.resume, warm, args.overwrite
        )
    except BaseException:
        distributed.finish(clean=False)
        raise
    distributed.finish()
    if w.main:
        if results:
            print(format_table(results))
        print(f"\nrun: {args.out} (retriever/, ranker/, index/, report.md, metrics.jsonl)")
    return 0


def _train_config(args: argparse.Namespace) -> AR2Config:
    """The config of ``ar2 train``: the preset or ``--config`` file, then ``--recipe``'s
    settings (:mod:`ar2.train.recipes`), then ``--model`` (a shortcut for ``retriever_model``
    and ``ranker_model``), then each ``--set KEY=VALUE`` in order, so ``--set`` wins over all.
    A key or type error names the ``--set`` at fault; a value out of range names the file and
    the ``--set`` settings given.

    Example:
        >>> argv = ["train", "data", "--out", "o", "--preset", "toy", "--model", "m",
        ...         "--set", "g0.steps=80", "--set", "ranker_model=r"]
        >>> cfg = _train_config(build_parser().parse_args(argv))
        >>> cfg.g0.steps, cfg.retriever_model, cfg.ranker_model
        (80, 'm', 'r')
        >>> argv = ["train", "data", "--out", "o", "--recipe", "adore", "--set", "adore.steps=50"]
        >>> cfg = _train_config(build_parser().parse_args(argv))
        >>> cfg.recipe, cfg.refresh, cfg.adore.steps
        ('adore', False, 50)
    """
    from ar2._overrides import apply_overrides
    from ar2.config import load_ar2_config, load_config_file, preset_path

    source = args.config or str(preset_path(args.preset))
    data = load_config_file(source)
    if args.recipe:
        from ar2.train.recipes import apply

        data = apply(args.recipe, data)
        source = f"{source} with --recipe {args.recipe}"
    if args.model:
        data = data | _start_models(Path(args.model))
    if args.set:
        data = apply_overrides(data, args.set)
        source = f"{source} with --set {' '.join(args.set)}"
    return load_ar2_config(data, source)


def _start_models(model: Path) -> dict[str, Any]:
    """``--model`` of ``ar2 train``: one folder for both models, or an ``ar2 pretrain`` run
    (its retriever and its ranker, the ranker no longer started from G0).

    Example:
        >>> _start_models(Path("m"))
        {'retriever_model': 'm', 'ranker_model': 'm'}
    """
    from ar2._outdir import is_kind

    if is_kind(model, "pretrain"):
        return {"retriever_model": str(model / "retriever"), "ranker_model": str(model / "ranker"),
                "ranker_from_g0": False}  # fmt: skip
    return {"retriever_model": str(model), "ranker_model": str(model)}


def cmd_pretrain(args: argparse.Namespace) -> int:
    """A retriever and a ranker trained on a corpus alone (ICT pseudo-queries and crops)."""
    from ar2.report import format_table
    from ar2.train.pretrain import run_pretrain

    cfg = _pretrain_config(args)
    results = run_pretrain(Path(args.data_dir), Path(args.out), cfg, args.resume, args.overwrite)
    if results:
        print(format_table(results))
    print(f"\nrun: {args.out} (retriever/, ranker/, report.md, metrics.jsonl); train from it "
          f"with: ar2 train DATA --model {args.out}")  # fmt: skip
    return 0


def _pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """The config of ``ar2 pretrain``: the defaults, a ``--config`` TOML over them (table by
    table), ``--model``, then each ``--set``.

    Example:
        >>> argv = ["pretrain", "data", "--out", "o", "--set", "retriever.steps=5"]
        >>> cfg = _pretrain_config(build_parser().parse_args(argv))
        >>> cfg.retriever.steps, cfg.retriever.batch_size
        (5, 32)
    """
    import dataclasses

    from ar2._overrides import apply_overrides
    from ar2.config import load_pretrain_config, load_toml

    data = dataclasses.asdict(PretrainConfig())
    source = "ar2 pretrain's defaults"
    if args.config:
        source = args.config
        for key, value in load_toml(args.config).items():
            data[key] = data[key] | value if isinstance(data.get(key), dict) and \
                isinstance(value, dict) else value  # fmt: skip
    if args.model:
        data["model"] = args.model
    if args.set:
        data = apply_overrides(data, args.set, PretrainConfig)
        source = f"{source} with --set {' '.join(args.set)}"
    return load_pretrain_config(data, source)


def _settings(base: Any, sets: list[str], command: str) -> Any:
    """The settings dataclass ``base`` with ``--set KEY=VALUE`` overrides, checked; errors
    name the command and the overrides.

    Example:
        >>> from ar2.config import DistillConfig
        >>> _settings(DistillConfig(layers=2), ["stage.steps=7"], "ar2 distill-query").stage.steps
        7
    """
    import dataclasses

    from ar2._overrides import apply_overrides
    from ar2.config import load_tables

    data = dataclasses.asdict(base)
    data = apply_overrides(data, sets, type(base)) if sets else data
    source = command + (f" with --set {' '.join(sets)}" if sets else "")
    return load_tables(type(base), data, source)


def cmd_distill_query(args: argparse.Namespace) -> int:
    """A query tower of fewer layers trained to give a run's query vectors (ScalingNote)."""
    from ar2.config import DistillConfig
    from ar2.train.distill import run_distill

    cfg = _settings(DistillConfig(layers=args.layers), args.set, "ar2 distill-query")
    r = run_distill(Path(args.run), Path(args.out), cfg, args.resume, args.overwrite)
    for split in ("dev", "test"):
        if split in r:
            s = r[split]
            print(f"{split:5} nDCG@10 teacher {s['teacher']:.4f}  student {s['student']:.4f}  "
                  f"({s['diff']:+.4f}, p = {s['p']:.3g}, {s['queries']} queries)")  # fmt: skip
    t = r["latency_ms_p50"]
    print(f"one query (torch, p50): teacher {t['teacher']} ms, student {t['student']} ms")
    print(f"\nserve it: ar2 serve {args.run} --retriever {Path(args.out) / 'retriever'}")
    return 0


def cmd_jpq(args: argparse.Namespace) -> int:
    """A run's index compressed to ``m`` bytes a document, its query tower and centroids
    trained together (JPQ)."""
    from ar2.config import JPQConfig
    from ar2.train.jpq import SYSTEMS, run_jpq

    cfg = _settings(JPQConfig(m=args.m), args.set, "ar2 jpq")
    r = run_jpq(Path(args.run), Path(args.out), cfg, args.resume, args.overwrite)
    sizes = r["bytes_per_doc"]
    print("bytes/doc  " + "  ".join(f"{name} {sizes[name]}" for name in SYSTEMS))
    return _print_compression(r, SYSTEMS, Path(args.out))


def cmd_repconc(args: argparse.Namespace) -> int:
    """A run's index compressed to ``m`` bytes a document by RepCONC: both towers and the
    centroids trained under a balanced clustering, then JPQ's stage over the new codes."""
    from ar2.config import RepCONCConfig
    from ar2.train.repconc import SYSTEMS, run_repconc

    cfg = _settings(RepCONCConfig(m=args.m), args.set, "ar2 repconc")
    r = run_repconc(Path(args.run), Path(args.out), cfg, args.resume, args.overwrite)
    return _print_compression(r, SYSTEMS, Path(args.out))


def _print_compression(r: dict[str, Any], systems: tuple[str, ...], out: Path) -> int:
    """Print a compression's report (``ar2 jpq``, ``ar2 repconc``): each split's nDCG@10 of
    ``systems`` and its paired tests, then how to serve it."""
    for split in ("dev", "test"):
        if split in r:
            s, tests = r[split]["nDCG@10"], r[split]["tests"]
            print(f"{split:5} nDCG@10 " + "  ".join(f"{name} {s[name]:.4f}" for name in systems)
                  + "  (" + ", ".join(f"{k} {t['diff']:+.4f} p = {t['p']:.3g}"
                                      for k, t in tests.items()) + ")")  # fmt: skip
    print(f"\nserve it: ar2 serve {out / 'index'}")
    return 0


def cmd_adore(args: argparse.Namespace) -> int:
    """A run's query tower trained against its fixed index, with negatives retrieved at
    every step (ADORE)."""
    from ar2.config import ADOREConfig
    from ar2.train.adore import SYSTEMS, run_adore

    cfg = _settings(ADOREConfig(), args.set, "ar2 adore")
    r = run_adore(Path(args.run), Path(args.out), cfg, args.resume, args.overwrite)
    for split in ("dev", "test"):
        if split in r:
            s, [t] = r[split]["nDCG@10"], r[split]["tests"].values()
            print(f"{split:5} nDCG@10 " + "  ".join(f"{name} {s[name]:.4f}" for name in SYSTEMS)
                  + f"  (adore - run {t['diff']:+.4f}, p = {t['p']:.3g})")  # fmt: skip
    print(f"\nserve it: ar2 serve {Path(args.out) / 'index'}")
    return 0


def cmd_sparse(args: argparse.Namespace) -> int:
    """The inference-free learned sparse retriever trained over a run's mined groups."""
    from ar2.config import SparseConfig
    from ar2.train.sparse import run_sparse

    cfg = _settings(SparseConfig(), args.set, "ar2 sparse")
    r = run_sparse(Path(args.run), Path(args.out), cfg, args.resume, args.overwrite)
    for split in ("dev", "test"):
        if split in r:
            s, t = r[split]["nDCG@10"], r[split]["tests"]
            print(f"{split:5} nDCG@10 sparse {s['sparse']:.4f}  dense {s['dense']:.4f}  bm25 "
                  f"{s['bm25']:.4f}  (sparse - dense {t['sparse - dense']['diff']:+.4f}, "
                  f"p = {t['sparse - dense']['p']:.3g})")  # fmt: skip
    print(f"\nserve it, with no model per query: ar2 serve {Path(args.out) / 'index'}")
    return 0


def cmd_anncur(args: argparse.Namespace) -> int:
    """k-NN with a run's ranker alone (ANNCUR's CUR factorisation) against retrieve-then-rerank."""
    from ar2.anncur import markdown, run_anncur
    from ar2.config import ANNCURConfig

    cfg = _settings(ANNCURConfig(), args.set, "ar2 anncur")
    report = run_anncur(Path(args.run), Path(args.out), cfg, args.resume, args.overwrite)
    print(markdown(report))
    print(f"chart: {Path(args.out) / 'anncur.png'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a run or an index over HTTP until Ctrl-C or SIGTERM (then finish what is running)."""
    from ar2._optional import require

    require("fastapi", "serve")
    from ar2.encoders.onnx_runtime import resolve_backend
    from ar2.serve import SearchService, create_app
    from ar2.serve.security import parse_allowed_hosts
    from ar2.serve.server import default_allowed_hosts, is_loopback, listen, server, url_of

    hosts = None if args.allowed_hosts is None else parse_allowed_hosts(args.allowed_hosts)
    resolve_backend(args.backend)  # settings first, then the port, then the loading
    sock = listen(args.host, args.port)  # fail fast, before minutes of loading
    log.info("loading %s", args.path)
    service = SearchService.load(
        args.path, args.reranker, args.retriever, args.rerank_k, args.backend, args.allow_updates
    )
    if args.allow_updates:
        log.warning("POST /documents and DELETE /documents/{id} change the index for everyone "
                    "who can reach %s", args.host)  # fmt: skip
    if not is_loopback(sock):
        log.warning("listening on %s: anyone who can reach it can search", args.host)
    if args.rerank_k and not service.has_ranker:
        log.warning(
            "--rerank-k %d ignored: %s has no ranker (pass --reranker)", args.rerank_k, args.path
        )
    rerank = f"; rerank top {service.default_rerank_k}" if service.has_ranker else ""
    modes, runs_on = ", ".join(service.modes), _runs_on(service.info()["backends"])
    print(f"ar2 serve: {url_of(sock)}/ ({len(service.docs)} documents; {modes}{rerank}{runs_on})")
    if args.docs:
        log.info("/docs and /redoc load Swagger UI and ReDoc from cdn.jsdelivr.net")
    sys.stdout.flush()
    app = create_app(service, allowed_hosts=hosts or default_allowed_hosts(sock), docs=args.docs)
    server(app, quiet=args.quiet).run(sockets=[sock])
    return 0


def _runs_on(backends: dict[str, Any]) -> str:
    """``; on onnx`` (where the models run), or nothing when no model runs per query."""
    names = sorted({b["backend"] for b in backends.values() if b})
    return f"; on {', '.join(names)}" if names else ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="ar2", description="Train, evaluate and serve search.")
    parser.add_argument("--version", action="version", version=f"ar2 {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_index(sub)
    _add_search(sub)
    _add_eval(sub)
    _add_pretrain(sub)
    _add_train(sub)
    _add_distill_query(sub)
    _add_jpq(sub)
    _add_repconc(sub)
    _add_adore(sub)
    _add_anncur(sub)
    _add_sparse(sub)
    _add_serve(sub)
    _add_export(sub)
    return parser


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a BM25, dense or sparse index of a BEIR folder")
    p.add_argument("data_dir", help="BEIR folder with corpus.jsonl")
    p.add_argument("--kind", choices=INDEX_KINDS, default="bm25")
    p.add_argument("--out", required=True, help="index folder to write")
    _add_overwrite(p, "replace an --out that is not an ar2 index (its files are lost)")
    p.add_argument("--model", help="encoder folder: --kind dense (default: all-MiniLM-L6-v2), or "
                   "--kind sparse (a sparse encoder, required)")  # fmt: skip
    p.add_argument(
        "--preset",
        default="flat",
        choices=INDEX_PRESETS,
        help="auto: chosen from the corpus size and --ram-budget-gb (default flat)",
    )
    p.add_argument("--factory", help="a FAISS factory string, overriding --preset")
    p.add_argument(
        "--ram-budget-gb", type=float, help="memory for the index (auto; default: RAM/2)"
    )
    p.add_argument(
        "--refine",
        type=int,
        default=10,
        help="compressed indexes (ivfpq, --quantize): re-score the top k x N hits with the "
        "exact vectors kept on disk; 0: off (default 10)",
    )
    p.add_argument(
        "--quantize",
        choices=INDEX_QUANTIZERS,
        help="store codes, not float32 vectors: int8 (4x smaller; presets flat, ivf, hnsw) or "
        "binary (the signs, 32x smaller; flat)",
    )
    p.add_argument("--store", choices=STORES, default="faiss",
                   help="where a dense index keeps its vectors: a FAISS index in --out "
                   "(default), or a Milvus collection that --out names (pip install "
                   "'ar2[milvus]')")  # fmt: skip
    _add_store_options(p)
    _add_precision(p)
    p.set_defaults(func=cmd_index)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="copy a run's dense index into a Milvus collection")
    p.add_argument("path", help="a run folder (its index/) or a dense index folder")
    p.add_argument("--out", required=True, help="the index folder that names the collection")
    p.add_argument("--store", choices=["milvus"], default="milvus",
                   help="where to (milvus: pip install 'ar2[milvus]')")  # fmt: skip
    _add_overwrite(p, "replace an --out that is not an ar2 index (its files are lost)")
    _add_store_options(p)
    p.add_argument("--preset", default="flat", choices=INDEX_PRESETS,
                   help="the Milvus index: flat (FLAT), ivf (IVF_FLAT), hnsw (HNSW), ivfpq "
                   "(IVF_PQ) or auto (default flat)")  # fmt: skip
    p.set_defaults(func=cmd_export, kind="dense", factory=None, ram_budget_gb=None, refine=0,
                   quantize=None)  # fmt: skip


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uri", help="--store milvus: a milvus-lite store path, or a server URI "
                   "(http://host:19530); default: a store inside --out. Credentials come "
                   "from MILVUS_TOKEN, or MILVUS_USER and MILVUS_PASSWORD")  # fmt: skip
    p.add_argument("--collection", help="--store milvus: the collection (an alias ar2 "
                   "switches to each new build); default: --out's folder name")  # fmt: skip


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="print the hits of a query against an index folder")
    p.add_argument("index_dir", help="folder written by `ar2 index`")
    p.add_argument("query", help="the query text")
    p.add_argument("-k", type=positive_int, default=10, help="hits to print (default 10)")
    p.add_argument("--reranker", help="cross-encoder folder to rerank with")
    p.add_argument("--rerank-k", type=positive_int, default=50, help="hits to rerank (default 50)")
    _add_backend(p)
    p.set_defaults(func=cmd_search)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from ar2.retrievers import KINDS  # light: names only

    from_ = f"comma-separated: {', '.join(KINDS)}; dense:PATH and hybrid:PATH name a model folder"
    p = sub.add_parser("eval", help="evaluate systems on a BEIR split and write a report")
    p.add_argument("data_dir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test", help="qrels split (default test)")
    p.add_argument("--systems", default="bm25,dense,hybrid", help=from_)
    p.add_argument("--out", required=True, help="folder for report.md, report.json, report.png")
    _add_overwrite(p, "write into an --out that is not an ar2 eval folder (same names replaced)")
    p.add_argument("--measures", default="nDCG@10,RR@10,R@10,R@100", help="ir_measures names")
    p.add_argument("--depth", type=positive_int, default=100, help="hits retrieved per query")
    p.add_argument("--reranker", help="cross-encoder folder: adds a <system>+rerank row each")
    p.add_argument("--rerank-k", type=positive_int, default=100, help="hits reranked per query")
    p.add_argument("--fusion-weight", type=unit_fraction, metavar="W",
                   help="rerank by (1 - W) z(G) + W z(D) instead of the reranker's saved weight "
                        "(1: the ranker alone)")  # fmt: skip
    p.add_argument("--preset", default="flat", choices=INDEX_PRESETS)
    _add_precision(p)
    p.set_defaults(func=cmd_eval)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="train a retriever and a ranker on a corpus alone (no queries, no qrels)"
    )
    p.add_argument("data_dir", help="folder with corpus.jsonl (nothing else is read)")
    p.add_argument("--out", required=True, help="run folder (retriever/, ranker/, report)")
    p.add_argument("--config", help="a TOML file of PretrainConfig fields")
    p.add_argument("--model", help="start both models from this folder (default: MiniLM)")
    change = "change a setting (ict_fraction=0.5, retriever.steps=200), repeatable"
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=change)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_overwrite(p, "start again in an --out that holds a pretraining run or other files")
    p.set_defaults(func=cmd_pretrain)


def _add_distill_query(sub: argparse._SubParsersAction) -> None:
    p = _add_derived(
        sub,
        "distill-query",
        "a smaller query tower for a trained run (its index stays): faster queries",
        ("retriever/, report.md, report.json", "pseudo_queries=5000, stage.steps=500",
         "a distillation"),
        cmd_distill_query,
    )  # fmt: skip
    p.add_argument("--layers", type=positive_int, default=3, help="layers kept (default 3)")


def _add_jpq(sub: argparse._SubParsersAction) -> None:
    p = _add_derived(
        sub,
        "jpq",
        "compress a trained run's index to M bytes a document (JPQ: the query tower and "
        "the PQ centroids trained together)",
        ("index/, retriever/, posthoc/, report",
         "negatives=200, stage.steps=200, stage.head_lr=1e-4", "a JPQ compression"),
        cmd_jpq,
    )  # fmt: skip
    p.add_argument("--m", type=positive_int, default=48, help="bytes per document (default 48)")


def _add_repconc(sub: argparse._SubParsersAction) -> None:
    p = _add_derived(
        sub,
        "repconc",
        "compress a trained run's index to M bytes a document (RepCONC: both towers and the "
        "centroids under a balanced clustering, then JPQ's stage), beside JPQ",
        ("index/, retriever/, constrained/, jpq/, posthoc/, report",
         "constrained.steps=60, mse_weight=1e-4, stage.steps=200", "a RepCONC compression"),
        cmd_repconc,
    )  # fmt: skip
    p.add_argument("--m", type=positive_int, default=48, help="bytes per document (default 48)")


def _add_adore(sub: argparse._SubParsersAction) -> None:
    _add_derived(
        sub,
        "adore",
        "train a run's query tower against its fixed index, with negatives retrieved at "
        "every step (ADORE)",
        ("index/, retriever/, report", "negatives=200, stage.steps=200, stage.lr=1e-5; "
         "kd_weight=0.01 adds the run's ranker as a teacher, teacher.kind=ensemble a mix",
         "an ADORE output"),
        cmd_adore,
    )  # fmt: skip


def _add_sparse(sub: argparse._SubParsersAction) -> None:
    _add_derived(
        sub,
        "sparse",
        "train an inference-free learned sparse retriever over a run's mined groups (no "
        "model per query)",
        ("model/, index/, report", "stage.steps=200, flops_weight=1e-3, start=model",
         "a sparse retriever"),
        cmd_sparse,
    )  # fmt: skip


def _add_anncur(sub: argparse._SubParsersAction) -> None:
    _add_derived(
        sub,
        "anncur",
        "k-NN search with a run's ranker alone through a CUR factorisation (ANNCUR), "
        "against retrieve-then-rerank, at each budget of ranker calls",
        ("report (recall of the ranker's top k, nDCG@10), anncur.png",
         "anchor_queries=50, anchor_items=100, docs=1000, queries=50", "an ANNCUR study"),
        cmd_anncur,
    )  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="AR2 co-training of a retriever and a ranker")
    p.add_argument("data_dir", help="BEIR folder with qrels/train.tsv (dev and test optional)")
    p.add_argument("--out", required=True, help="run folder (models, index, report, checkpoints)")
    names = ", ".join(sorted(f.stem for f in preset_path("quick").parent.glob("*.toml")))
    p.add_argument("--preset", default="quick", help=f"one of {names} (default quick)")
    p.add_argument(
        "--config", help="a TOML file of AR2Config fields (or a run's config.json), not --preset"
    )
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="train with this recipe's settings over the preset's (default: the preset's, "
        "ar2); docs/recipes.md",
    )
    p.add_argument("--model", help="start both models from this folder (default: MiniLM)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one setting of the preset or --config (and --model), repeatable: a field "
        "(rounds=3) or table.field (g0.steps=80); VALUE is a TOML value or plain text",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_overwrite(p, "start again in an --out that holds a run or other files (all lost)")
    p.add_argument(
        "--warm-start",
        metavar="RUN",
        help="copy G0 (and D0) from a run with the same warm-up settings instead of training",
    )
    p.set_defaults(func=cmd_train)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a run or an index over HTTP (search API + web page)")
    p.add_argument("path", help="a run folder (`ar2 train --out`) or an index folder (`ar2 index`)")

    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument(
        "--port", type=port_number, default=8000, help="port (default 8000; 0: any free port)"
    )
    p.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="Host header names answered, comma-separated (any port; *.example.com: its "
        "subdomains; *: any). Default: on loopback localhost,127.0.0.1,[::1], else any",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help="serve /docs and /redoc (Swagger UI, ReDoc: scripts loaded from a CDN)",
    )
    p.add_argument("--reranker", help="cross-encoder folder (a run's own ranker by default)")
    p.add_argument(
        "--rerank-k",
        type=non_negative_int,
        help="hits reranked by default (a run's own setting otherwise; 0: none)",
    )
    p.add_argument("--retriever", help="encoder folder for an index whose encoder was moved")
    p.add_argument("--allow-updates", action="store_true",
                   help="answer POST /documents and DELETE /documents/{id} (an index in "
                   "Milvus; the dense mode only). Off by default")  # fmt: skip
    _add_backend(p)
    p.set_defaults(func=cmd_serve)


def _add_derived(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    texts: tuple[str, str, str],
    func: Any,
) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``summary``: its line in ``ar2 --help``) of a command that
    works from a finished run into ``--out`` (``ar2 distill-query``, ``ar2 jpq``, ``ar2
    repconc``, ``ar2 adore``, ``ar2 anncur``, ``ar2 sparse``): the run, ``--out``, ``--set``,
    ``--resume``, ``--overwrite``. ``texts``: what ``--out`` holds, example settings, and
    what the output is called."""
    outputs, settings, made = texts
    p = sub.add_parser(name, help=summary)
    p.add_argument("run", help="a finished `ar2 train` run folder")
    p.add_argument("--out", required=True, help=f"folder for {outputs}")
    change = f"change a setting ({settings}), repeatable"
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=change)
    p.add_argument("--resume", action="store_true", help=f"continue {made} in --out")
    _add_overwrite(p, f"start again in an --out that holds {made} or other files")
    p.set_defaults(func=func)
    return p


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help=f"{what}; without it such an --out is refused"
    )


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="where queries are encoded and pairs scored: auto (the default) encodes queries "
        "on onnx when onnxruntime is installed (pip install 'ar2[onnx]') and scores pairs on "
        "torch; onnx-int8 quantizes the weights",
    )


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: bf16 where the CPU/GPU supports it (default)",
    )


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    handler.setLevel(logging.WARNING)  # third-party loggers (some set DEBUG) stay quiet
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(logging.Formatter("[ar2] %(message)s"))
    log.addHandler(ours)
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _fail(message: str) -> int:
    """Print ``ar2: error: <message>.`` on one line; the exit status of a user error."""
    line = " ".join(message.split())
    print(f"ar2: error: {line if line.endswith('.') else line + '.'}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv``, run the subcommand, turn user errors into one clear line."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Ar2Error as err:
        return _fail(str(err))
    except OSError as err:  # unreadable input, unwritable output, full disk
        return _fail(os_error_message(err))
    except KeyboardInterrupt:
        print("ar2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
