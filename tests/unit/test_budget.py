"""The pipeline's time budget (jobs.pipeline): the fine-tuning gets the steps that end the
pipeline within --minutes at the pre-training's measured rate, decided once per run."""

from types import SimpleNamespace

from jobs.pipeline import (FINETUNE_STEP_COST, MIN_FINETUNE_STEPS, REFERENCE_STEP_S, RESERVE_S,
                           PipelineJob, budgeted_steps, finetune_steps_for)


def test_the_steps_fill_what_the_budget_leaves():
    # a fine-tuning step is priced at FINETUNE_STEP_COST pre-training steps
    assert finetune_steps_for(14, 75, 0.5) == int(2 * (840 - 75 - RESERVE_S) / FINETUNE_STEP_COST)
    # what follows the fine-tuning takes longer in proportion on a slower machine
    slow = RESERVE_S * 1.0 / REFERENCE_STEP_S
    assert finetune_steps_for(14, 75, 1.0) == int((840 - 75 - slow) / FINETUNE_STEP_COST)
    assert finetune_steps_for(14, 600, 2.0) == MIN_FINETUNE_STEPS  # a slow one: the floor


def test_the_steps_are_decided_once_and_kept_for_a_resumed_run(tmp_path):
    job, plan = PipelineJob(minutes=14), tmp_path / "plan.json"
    rows = job.batch_size * job.seq_len * job.cluster.workers
    pretrained = SimpleNamespace(metrics={"tokens_per_s": rows / 1.0})  # 1 s per step
    steps = budgeted_steps(job, plan, pretrained, 75.0)
    assert steps == finetune_steps_for(14, 75.0, 1.0) and plan.exists()
    assert budgeted_steps(job, plan, None, 500.0) == steps  # resumed: the same steps
    assert budgeted_steps(PipelineJob(finetune_steps=7), plan, pretrained, 0.0) == 7
    assert budgeted_steps(job, tmp_path / "other.json", None, 0.0) == MIN_FINETUNE_STEPS
