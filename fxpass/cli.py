"""The ``fxpass`` command line.

``fxpass example`` compiles a built-in patched model, shows what was rewritten, checks that the
compiled model matches the runtime one, and saves it whole.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
from pathlib import Path
from typing import Sequence

import torch

from fxpass import zoo
from fxpass.record import record_of
from fxpass.rewrite import compile

__all__ = ["main"]


def _bitwise_parity(entry: zoo.ZooEntry) -> list[tuple[str, bool]]:
    runtime, inputs = entry.build()
    gm = compile(copy.deepcopy(runtime))
    checks = []
    for mode in ("train", "eval"):
        runtime.train(mode == "train")
        gm.train(mode == "train")
        for model in (runtime, gm):
            model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out = runtime(*inputs)
        torch.manual_seed(0)
        out2 = gm(*inputs)
        checks.append((f"{mode} output", torch.equal(out, out2)))
        out.float().sum().backward()
        out2.float().sum().backward()
        grads = zip(runtime.named_parameters(), gm.named_parameters())
        checks.append(
            (
                f"{mode} gradients",
                all(
                    n == n2 and (p.grad is None) == (p2.grad is None)
                    and (p.grad is None or torch.equal(p.grad, p2.grad))
                    for (n, p), (n2, p2) in grads
                ),
            )
        )
    state, state2 = runtime.state_dict(), gm.state_dict()
    checks.append(
        ("state_dict", list(state) == list(state2) and all(torch.equal(state[k], state2[k]) for k in state))
    )
    return checks


def _example(args: argparse.Namespace) -> int:
    entry = zoo.get(args.model)
    if entry.missing():
        print(f"fxpass: the example {entry.name!r} needs {', '.join(entry.missing())}", file=sys.stderr)
        return 2
    model, inputs = entry.build()
    print(f"# {entry.name}: {entry.description}\n")
    gm = compile(model)
    print(record_of(gm).table(), end="\n\n")
    print("# generated code", gm.code, sep="\n")
    print("# parity with the runtime-patched model (bitwise)")
    checks = _bitwise_parity(entry)
    for name, passed in checks:
        print(f"  {name:<16} {'ok' if passed else 'DIFFERS'}")
    torch.save(gm, args.output)
    loaded = torch.load(args.output, weights_only=False).eval()
    model.eval()
    same = torch.equal(loaded(*inputs), model(*inputs))
    print(f"\nsaved the whole compiled model to {args.output}; reloaded output equal: {same}")
    return 0 if same and all(passed for _, passed in checks) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxpass", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    example = commands.add_parser("example", help="compile a built-in model, check it, save it")
    example.add_argument("--model", default="cnn_bn", choices=[e.name for e in zoo.entries()])
    example.add_argument("-o", "--output", type=Path, default=Path("fxpass-example.pt"))
    example.set_defaults(run=_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    return args.run(args)
