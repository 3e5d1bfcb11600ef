"""Consolidate a sharded training checkpoint into a serving export (safetensors + config + tokenizer).

    python -m jobs.export --checkpoint runs/ray/pt/checkpoint_... --out runs/exports/pt
    python -m jobs.export --checkpoint 's3://bucket/runs/pt/checkpoint_...' --out s3://bucket/exports/pt

Runs in one process (no Ray needed); training jobs also export at their end.
"""

from __future__ import annotations

import argparse

from lamda.checkpoint import export_checkpoint


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (local or s3://)")
    p.add_argument("--out", required=True, help="export destination (local or s3://)")
    a = p.parse_args(argv)
    out = export_checkpoint(a.checkpoint, a.out)
    print(f"exported {a.checkpoint} -> {out}")
    return out


if __name__ == "__main__":
    main()
