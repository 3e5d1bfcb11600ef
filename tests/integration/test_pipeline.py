"""jobs.pipeline on a local Ray cluster: tokenizer -> pre-training -> fine-tuning, then a re-run."""

import pytest

from jobs import pipeline
from lamda.checkpoint import load_export

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_stage_and_skips_finished_ones(ray_cluster, tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--preset", "debug", "--vocab-size", "1024",
            "--pretrain-steps", "10", "--finetune-steps", "5", "--seq-len", "64"]
    pipeline.main(args)
    out = capsys.readouterr().out
    assert "[1/3] tokenizer" in out and "[3/3] fine-tuning" in out and "pipeline done" in out
    model, tok = load_export(tmp_path / "finetuned")
    assert model.cfg.n_layer == 2 and tok.vocab_size == 1024
    pipeline.main(args)
    assert capsys.readouterr().out.count("exists:") == 3
