"""Job flags come from the config dataclasses (jobs.flags): each field is a flag with its type,
default and comment, nested configs included, and parsing gives the same dataclass a caller
(jobs.pipeline) would build."""

import dataclasses
from pathlib import Path

import pytest

from jobs import (evaluate, export, export_ratings, filter_safe, finetune, pipeline, pretrain,
                  tokenize, tool_data, train_tokenizer)
from jobs.flags import field_help, parse, parser
from lamda.config import AttentionKernels
from lamda.decode import SamplingConfig
from lamda.training import TrainConfig

# each job's settings and the flags it cannot run without
JOBS = [(pretrain.PretrainJob, {"run_name": "pt", "tokenizer": "t.model"}),
        (finetune.FinetuneJob, {"run_name": "ft", "init_from": "export"}),
        (filter_safe.FilterJob, {"model": "m", "dialogs": ("d.jsonl",), "out": "o"}),
        (evaluate.EvalJob, {"models": (Path("m"),), "questions": Path("q"), "out": Path("o")}),
        (tool_data.ToolDataJob, {"index": Path("i"), "out": Path("o")}),
        (tokenize.TokenizeJob, {"tokenizer": "t", "out": "o"}),
        (export.ExportJob, {"checkpoint": "c", "out": "o"}),
        (export_ratings.ExportRatingsJob, {"out": "o"}),
        (train_tokenizer.TokenizerJob, {"out": Path("o")}),
        (pipeline.PipelineJob, {})]


def argv(required: dict) -> list[str]:
    out = []
    for name, value in required.items():
        out += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else [value])]
    return out


@pytest.mark.parametrize("cls,required", JOBS, ids=[c.__name__ for c, _ in JOBS])
def test_the_flags_defaults_are_the_dataclass_defaults(cls, required):
    assert parse(cls, argv(required), None) == cls(**required)
    assert parser(cls, cls.__doc__).format_help()  # every help text renders


def test_flags_set_nested_configs_with_their_types():
    job = parse(pretrain.PretrainJob, [
        "--run-name", "x", "--tokenizer", "t", "--steps", "7", "--betas", "0.8", "0.9",
        "--documents", "a", "b", "--dialogs", "--launch", "dq=4.1.64", "--no-near-table",
        "--compile", "--workers", "3", "--warmup-steps", "2"], None)
    assert job.train == dataclasses.replace(pretrain.TRAIN, steps=7, betas=(0.8, 0.9), warmup_steps=2)
    assert job.documents == ("a", "b") and job.dialogs == ()
    assert job.attn_kernels == AttentionKernels(launch="dq=4.1.64", near_table=False)
    assert job.parallel.compile and job.cluster.workers == 3
    assert parse(finetune.FinetuneJob, ["--run-name", "x", "--init-from", "e"], None).train == \
        finetune.TRAIN  # each job's own defaults
    assert parse(evaluate.EvalJob, argv(JOBS[3][1]) + ["--top-k", "5"], None).sampling == \
        SamplingConfig(max_new_tokens=48, seed=0, top_k=5)


def test_every_field_of_a_config_is_a_flag_with_its_comment_as_help():
    help_text = " ".join(parser(pretrain.PretrainJob, None).format_help().split())
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in help_text
    assert "--fsdp" not in help_text and "--bf16" not in help_text  # skipped: set by the job
    assert "--dialog-fraction" not in parser(finetune.FinetuneJob, None).format_help()
    assert field_help(TrainConfig)["grad_clip"] == "max global gradient norm (0: off)"
    assert "paper: 50%" in help_text  # a % in a comment is text, not a format


@pytest.mark.parametrize("bad,message", [
    ([], "the following arguments are required: --run-name, --tokenizer"),
    (["--run-name", "x", "--tokenizer", "t", "--launch", "dq=4"], "launch: dq=4 is not one of"),
    (["--run-name", "x", "--tokenizer", "t", "--steps", "many"], "invalid int value: 'many'"),
    (["--run-name", "x", "--tokenizer", "t", "--preset", "huge"], "invalid choice: 'huge'"),
])
def test_bad_flags_are_usage_errors(bad, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(pretrain.PretrainJob, bad, None)
    assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the tokenizer needs some documents (nargs "+")
        parse(train_tokenizer.TokenizerJob, ["--out", "o", "--documents"], None)
