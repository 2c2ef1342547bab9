"""Where a profiled train step's time goes, by op class: reads what ``train_step.py --profile DIR``
wrote (the profiler's trace and the compiled step's optimised HLO).

  python benchmarks/profile_summary.py DIR [--dtype float32]

Each XLA op the trace shows is classed from the HLO: ``matmul`` (a dot, or a fusion around one),
``convolution``, ``copy/transpose``, ``elementwise/reduce fusion`` (LayerNorm, softmax, GELU,
optimizer, ... fused loops), ``gather/scatter/slice`` and ``other``. Prints one JSON line: the
seconds per class summed over the traced steps and every thread (ops of one step can run
concurrently on several cores, so the sum is thread-seconds) and each class's share.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import sys
from pathlib import Path

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_MOVES = {"copy", "transpose", "copy-start", "copy-done"}
_INDEXING = {"gather", "scatter", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "pad"}


def parse_hlo(text: str):
  """-> (opcode by instruction name, called computation by fusion name, opcodes per computation)."""
  opcode, calls, contents = {}, {}, collections.defaultdict(set)
  computation = None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and "=" not in line.split("{")[0]:
      computation = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m:
      name, op = m.groups()
      opcode[name] = op
      if computation:
        contents[computation].add(op)
      c = _CALLS.search(line)
      if c:
        calls[name] = c.group(1)
  return opcode, calls, contents


def op_class(name: str, opcode, calls, contents) -> str:
  op = opcode.get(name, "")
  inner = contents.get(calls.get(name, ""), set()) | {op}
  if "dot" in inner or (op == "custom-call" and "matmul" in name):
    return "matmul"
  if "convolution" in inner:
    return "convolution"
  if op in _MOVES or (op == "fusion" and inner <= _MOVES | {"fusion", "parameter", "bitcast"}):
    return "copy/transpose"
  if op in _INDEXING or (op == "fusion" and inner & {"gather", "scatter", "dynamic-slice",
                                                      "dynamic-update-slice"}):
    return "gather/scatter/slice"
  if op == "fusion" or op in {"reduce", "add", "multiply", "exponential", "divide", "select"}:
    return "elementwise/reduce fusion"
  return "other"


def summarize(profile_dir: Path, dtype: str = "float32") -> dict:
  hlo = profile_dir / f"train_step_{dtype}.hlo.txt"
  traces = sorted(profile_dir.glob("plugins/profile/*/*.trace.json.gz"))
  if not hlo.is_file() or not traces:
    raise SystemExit(f"{profile_dir}: expected {hlo.name} and plugins/profile/*/*.trace.json.gz "
                     f"(write them with benchmarks/train_step.py --profile {profile_dir})")
  opcode, calls, contents = parse_hlo(hlo.read_text())
  events = json.load(gzip.open(traces[-1]))["traceEvents"]
  seconds = collections.Counter()
  for e in events:
    name = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and name:
      seconds[op_class(name, opcode, calls, contents)] += e["dur"] / 1e6
  total = sum(seconds.values())
  return {"profile": str(profile_dir), "dtype": dtype, "op_seconds_total": round(total, 3),
          "by_class": {k: {"s": round(v, 3), "share": round(v / total, 3)}
                       for k, v in seconds.most_common()}}


if __name__ == "__main__":
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  dtype = sys.argv[sys.argv.index("--dtype") + 1] if "--dtype" in sys.argv else "float32"
  print(json.dumps(summarize(Path(sys.argv[1]), dtype)))
