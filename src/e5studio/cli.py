"""The e5studio command line: the only place that wires everything together."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from e5studio import __version__
from e5studio.errors import E5StudioError
from e5studio.settings import DEFAULT_MODEL, EngineSettings


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help=f"hub id, alias (e5-large-v2, e5-base-v2, e5-small-v2, all-minilm-l6-v2) or local "
                             f"directory (default {DEFAULT_MODEL}, or $E5STUDIO_MODEL)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default=None, help="auto (default: fp32 on CPU, bf16/fp16 on CUDA), float32, "
                                                      "float16, bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="token budget of one micro-batch (default 8192)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="truncate inputs at this many tokens incl. [CLS]/[SEP] (default: the model's, 512 for E5)")


def _engine_settings(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings.from_env(model=args.model, device=args.device, dtype=args.dtype, threads=args.threads,
                                   max_batch_tokens=args.max_batch_tokens, max_length=args.max_length)


def cmd_embed(args: argparse.Namespace) -> int:
    from e5studio.engine.embedder import Embedder

    texts = list(args.texts) if args.texts else [line.rstrip("\r\n") for line in sys.stdin]
    embedder = Embedder.load(_engine_settings(args))
    vectors = embedder.embed(texts, input_type=args.input_type)
    json.dump({"data": vectors.tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e5studio", description="Self-hosted E5 Large V2 embedding platform.")
    parser.add_argument("--version", action="version", version=f"e5studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts and print {\"data\": [[...], ...]} like the endpoint",
                           description="Embed TEXTs (or stdin, one text per line) and print the endpoint's JSON.")
    _add_engine_flags(embed)
    embed.add_argument("--input-type", choices=["query", "passage"], default=None,
                       help="add the E5 prefix ('query: ' / 'passage: ') where missing; default: texts as given")
    embed.add_argument("texts", nargs="*", metavar="TEXT")
    embed.set_defaults(func=cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except E5StudioError as exc:
        print(f"e5studio: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
