"""The time budget of training: the steps re-planned from a run's own rate
(lamda.training.steps_within), and the pipeline's budget for its fine-tuning (jobs.pipeline)."""

import pytest

from jobs.pipeline import (MAX_FINETUNE_STEPS, MIN_FINETUNE_STEPS, RESERVE_STEPS, PipelineJob,
                           finetune_budget, finetune_rows, pretrain_rows)
from lamda.cluster import ClusterSpec
from lamda.training import StepBudget, steps_within


def test_the_steps_fill_the_time_left_less_the_reserve():
    budget = StepBudget(minutes=10, reserve_steps=100)
    # 50 steps done, 600 s left at 1.2 s a step: 500 more fit, 100 of them kept for what follows
    assert steps_within(budget, 600.0, 50, 1.2, most=2000) == 50 + 500 - 100
    assert steps_within(budget, 600.0, 50, 1.2, most=300) == 300  # never past the most
    # a past deadline or a slow machine: the floor, and always one more step (it checkpoints)
    assert steps_within(StepBudget(min_steps=250), -5.0, 50, 1.2, most=2000) == 250
    assert steps_within(StepBudget(), -5.0, 50, 1.2, most=2000) == 51


def test_the_pipeline_gives_the_fine_tuning_the_time_the_other_stages_leave():
    steps, budget = finetune_budget(PipelineJob(minutes=14), elapsed_s=120.0)
    assert steps == MAX_FINETUNE_STEPS and budget.minutes == 12.0
    assert (budget.min_steps, budget.reserve_steps) == (MIN_FINETUNE_STEPS, RESERVE_STEPS)
    late = finetune_budget(PipelineJob(minutes=1), elapsed_s=120.0)[1]
    assert 0 < late.minutes * 60 <= 1  # a past deadline still limits the steps (to the floor)
    assert finetune_budget(PipelineJob(finetune_steps=7), 120.0) == (7, StepBudget())


def test_the_fine_tuning_takes_shorter_rows_with_the_pre_training_s_tokens_a_step():
    assert finetune_rows(PipelineJob()) == {"batch_size": 32, "seq_len": 128}  # 16 rows of 256
    assert finetune_rows(PipelineJob(batch_size=4, seq_len=512, finetune_seq_len=64)) == \
        {"batch_size": 32, "seq_len": 64}
    assert finetune_rows(PipelineJob(batch_size=8, seq_len=64)) == \
        {"batch_size": 8, "seq_len": 64}  # never longer


def test_the_rows_of_a_step_are_dealt_among_the_workers():
    four = ClusterSpec(workers=4)
    assert pretrain_rows(PipelineJob()) == {"batch_size": 16, "seq_len": 256}  # one worker
    assert pretrain_rows(PipelineJob(cluster=four)) == {"batch_size": 4, "seq_len": 256}
    assert finetune_rows(PipelineJob(cluster=four)) == {"batch_size": 8, "seq_len": 128}
    with pytest.raises(ValueError, match="multiple of --workers"):
        pretrain_rows(PipelineJob(batch_size=6, cluster=four))
