"""jobs.pipeline on a local Ray cluster: tokenizer -> pre-training -> fine-tuning, then a re-run."""

import pytest

from jobs import pipeline
from lamda.checkpoint import load_export
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_stage_and_skips_finished_ones(ray_cluster, tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--preset", "debug", "--vocab-size", "1024",
            "--pretrain-steps", "10", "--finetune-steps", "5", "--safe-finetune-steps", "3",
            "--seq-len", "64", "--eval-contexts", "3", "--serve", "--port", str(free_port())]
    pipeline.main(args)
    out = capsys.readouterr().out
    for stage in ("[1/9] tokenizer", "[3/9] fine-tuning", "[4/9] safe-data filtering",
                  "[5/9] fine-tuning on safe data", "[6/9] retrieval index", "[7/9] example turn",
                  "USER: ", "LAMDA (as Mount Everest): ", "[8/9] evaluation", "[9/9] chat server",
                  "-> 200 {", "pipeline done"):
        assert stage in out, stage
    assert (tmp_path / "eval" / "report.json").exists() and (tmp_path / "eval" / "quality.png").exists()
    from ray import serve
    serve.shutdown()
    model, tok = load_export(tmp_path / "finetuned_safe")
    assert model.cfg.n_layer == 2 and tok.vocab_size == 1024
    assert list((tmp_path / "safe_dialogs").glob("*.json*"))
    args = [a for a in args if a not in ("--serve",)][:-2]  # again, without serving
    pipeline.main(args)
    out = capsys.readouterr().out
    assert out.count("exists:") == 7 and "[1/8] tokenizer" in out, out
