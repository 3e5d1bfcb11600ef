"""jobs.filter_safe on a local Ray cluster: an actor pool scores every LaMDA turn of the bundled
dialogs; exactly the turns that pass the thresholds are written, in a format jobs.finetune reads."""

import json

import pytest
import torch

from jobs import filter_safe
from lamda.checkpoint import save_export
from lamda.config import ModelConfig
from lamda.data import SAMPLE_DIR, finetune_examples, parse_dialog, read_jsonl
from lamda.model import build_model
from lamda.rank import score_responses
from lamda.safety_filter import lamda_turns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export(tmp_path_factory, tok):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).eval()
    path = tmp_path_factory.mktemp("model") / "export"
    save_export(path, model.state_dict(), model.cfg, tok)
    return path, model


def test_filter_keeps_exactly_the_turns_that_pass(ray_cluster, export, tok, tmp_path):
    path, model = export
    dialogs = read_jsonl(SAMPLE_DIR / "dialogs.jsonl", "dialog")[:60]
    src = tmp_path / "dialogs.jsonl"
    src.write_text("".join(json.dumps({"id": d.id, "turns": [t.__dict__ for t in d.turns]}) + "\n"
                           for d in dialogs))
    rows = [t for d in dialogs for t in lamda_turns(d)]
    probs = score_responses(model, tok, [c for _, c, _ in rows], [r for _, _, r in rows])
    unsafe = probs[:, 3]
    quality = 3 * probs[:, 0] + probs[:, 1] + probs[:, 2]
    max_unsafe, min_quality = float(unsafe.median()), float(quality.median())
    expected = {rid for (rid, _, _), u, q in zip(rows, unsafe.tolist(), quality.tolist())
                if u < max_unsafe and q >= min_quality}
    borderline = {rid for (rid, _, _), u, q in zip(rows, unsafe.tolist(), quality.tolist())
                  if abs(u - max_unsafe) < 1e-4 or abs(q - min_quality) < 1e-4}

    out = tmp_path / "safe"
    counts = filter_safe.main(["--model", str(path), "--dialogs", str(src), "--out", str(out),
                               "--max-unsafe", str(max_unsafe), "--min-quality", str(min_quality),
                               "--actors", "2", "--batch-size", "16", "--cpus-per-actor", "0.5"])
    assert counts["turns_in"] == len(rows)
    records = [json.loads(line) for f in sorted(out.glob("*.json*")) for line in open(f)]
    kept = {r["id"] for r in records}
    assert kept - borderline == expected - borderline and 0 < len(kept) < len(rows)
    assert counts["kept"] == len(records)
    # each record is a dialog whose last turn is the kept LaMDA turn, with its scores
    rec = records[0]
    assert rec["turns"][-1]["speaker"] == "lamda" and set(rec["scores"]) >= {"unsafe", "quality"}
    examples = finetune_examples(tok, parse_dialog(rec), "dialog")
    assert len(examples) == 1 and sum(examples[0].loss_mask) == len(tok.encode(rec["turns"][-1]["text"])) + 1

    from lamda.ray_data import finetune_dataset
    packed, packing = finetune_dataset(tok, 256, dialogs=[str(out)])  # jobs.finetune reads it
    assert sum(int(r["segments"].max()) for r in packed.take_all()) == len(records)  # one each
    assert packing == {"examples": len(records), "left_out": 0}
    # rows shorter than some examples: those are left out, and counted
    lengths = sorted(len(finetune_examples(tok, parse_dialog(r), "dialog")[0].ids) for r in records)
    width = lengths[len(lengths) // 2]
    packed, packing = finetune_dataset(tok, width - 1, dialogs=[str(out)])
    longer = sum(n > width for n in lengths)
    assert packing == {"examples": len(records), "left_out": longer} and longer > 0
    assert sum(int(r["segments"].max()) for r in packed.take_all()) == len(records) - longer

    top = filter_safe.main(["--model", str(path), "--dialogs", str(src), "--out", str(tmp_path / "top"),
                            "--max-unsafe", "1.0", "--top-fraction", "0.25", "--batch-size", "16"])
    assert top["kept"] == int(len(rows) * 0.25)
