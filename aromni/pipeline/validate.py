"""``aromni validate``: every row against the sample grammar, every shard against the manifest."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from aromni.layout import Layout
from aromni.pipeline.manifest import MANIFEST, read_manifest
from aromni.sample import ROW_SCHEMA, check_row


@dataclass
class Findings:
    rows: int = 0
    shards: int = 0
    problems: list[str] = field(default_factory=list)
    more: int = 0  # problems beyond the first ``limit``

    def add(self, msg: str, limit: int = 200):
        if len(self.problems) < limit:
            self.problems.append(msg)
        else:
            self.more += 1

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(out: str | Path) -> Findings:
    out = Path(out)
    f = Findings()
    if not (out / MANIFEST).exists():
        f.add(f"{out}: no {MANIFEST} (is this an aromni build folder?)")
        return f
    try:
        m = read_manifest(out)
        layout = Layout.from_dict(m["layout"])
    except (ValueError, KeyError, TypeError) as e:
        f.add(f"{MANIFEST}: unreadable or without a valid layout: {e}")
        return f
    seen_ids: set[str] = set()
    total_rows = total_tokens = 0
    for s in m.get("shards", []):
        p = out / s["path"]
        f.shards += 1
        if not p.exists():
            f.add(f"{s['path']}: listed in the manifest but missing")
            continue
        h = hashlib.sha256(p.read_bytes()).hexdigest()
        if h != s["sha256"]:
            f.add(f"{s['path']}: sha256 {h[:12]}... does not match the manifest's {s['sha256'][:12]}...")
        pf = pq.ParquetFile(p)
        if not pf.schema_arrow.equals(ROW_SCHEMA, check_metadata=False):
            f.add(f"{s['path']}: schema differs from the row schema: {pf.schema_arrow}")
            continue
        n_rows = n_tokens = 0
        for batch in pf.iter_batches(batch_size=512):
            for r in batch.to_pylist():
                n_rows += 1
                n_tokens += len(r["input_ids"])
                where = f"{s['path']} row {n_rows - 1} ({r['id']})"
                if r["n_tokens"] != len(r["input_ids"]):
                    f.add(f"{where}: n_tokens {r['n_tokens']} != {len(r['input_ids'])}")
                if r["id"] in seen_ids:
                    f.add(f"{where}: duplicate id")
                seen_ids.add(r["id"])
                for problem in check_row(r["input_ids"], r["segments"], layout):
                    f.add(f"{where}: {problem}")
        if n_rows != s["rows"]:
            f.add(f"{s['path']}: {n_rows} rows, manifest says {s['rows']}")
        if n_tokens != s["tokens"]:
            f.add(f"{s['path']}: {n_tokens} tokens, manifest says {s['tokens']}")
        total_rows += n_rows
        total_tokens += n_tokens
    f.rows = total_rows
    if m.get("rows") is not None and total_rows != m["rows"]:
        f.add(f"{MANIFEST}: rows {m['rows']} but shards hold {total_rows}")
    for src, a in m.get("accounting", {}).items():
        if a["read"] != a["written"] + sum(a["rejected"].values()):
            f.add(f"accounting for {src} does not reconcile: read {a['read']} != written {a['written']} + "
                  f"rejected {sum(a['rejected'].values())}")
    return f
