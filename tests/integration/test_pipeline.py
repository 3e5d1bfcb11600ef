"""jobs.pipeline on a local Ray cluster: every stage, the served check, then a re-run."""

import json

import pytest

from jobs import pipeline
from lamda.checkpoint import load_export
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_stage_and_skips_finished_ones(ray_cluster, tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--preset", "debug", "--vocab-size", "1024",
            "--pretrain-steps", "10", "--finetune-steps", "5", "--safe-finetune-steps", "3",
            "--seq-len", "128", "--tool-data-fraction", "0.05", "--eval-per-kind", "1",
            "--check-per-kind", "2", "--serve", "--port", str(free_port())]
    pipeline.main(args)
    out = capsys.readouterr().out
    for stage in ("[1/9] retrieval index", "[2/9] tool-use data", "[3/9] tokenizer",
                  "[5/9] fine-tuning", "[6/9] safe-data filtering", "[7/9] fine-tuning on safe data",
                  "[8/9] evaluation", "[9/9] chat server", "held-out questions through POST",
                  "arithmetic", "USER: ", "LAMDA: ", "pipeline done"):
        assert stage in out, stage
    for name in ("report.json", "grounding.png", "served.json"):
        assert (tmp_path / "eval" / name).exists(), name
    served = json.loads((tmp_path / "eval" / "served.json").read_text())
    assert len(served["turns"]) == 2 * 5 and "accuracy_arithmetic" in served["metrics"]
    from ray import serve
    serve.shutdown()
    model, tok = load_export(tmp_path / "finetuned_safe")
    assert model.cfg.n_layer == 2 and tok.vocab_size == 1024
    assert list((tmp_path / "safe_dialogs").glob("*.json*"))
    args = [a for a in args if a not in ("--serve",)][:-2]  # again, without serving
    pipeline.main(args)
    out = capsys.readouterr().out
    assert out.count("exists:") == 8 and "[1/8] retrieval index" in out, out
