"""jobs.pipeline on a local Ray cluster: tokenizer -> pre-training -> fine-tuning, then a re-run."""

import pytest

from jobs import pipeline
from lamda.checkpoint import load_export

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_stage_and_skips_finished_ones(ray_cluster, tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--preset", "debug", "--vocab-size", "1024",
            "--pretrain-steps", "10", "--finetune-steps", "5", "--safe-finetune-steps", "3",
            "--seq-len", "64"]
    pipeline.main(args)
    out = capsys.readouterr().out
    for stage in ("[1/7] tokenizer", "[3/7] fine-tuning", "[4/7] safe-data filtering",
                  "[5/7] fine-tuning on safe data", "[6/7] retrieval index", "[7/7] example turn",
                  "USER: ", "LAMDA (as Mount Everest): ", "pipeline done"):
        assert stage in out
    model, tok = load_export(tmp_path / "finetuned_safe")
    assert model.cfg.n_layer == 2 and tok.vocab_size == 1024
    assert list((tmp_path / "safe_dialogs").glob("*.json*"))
    pipeline.main(args)
    assert capsys.readouterr().out.count("exists:") == 6
