from jobs import pipeline


def test_pipeline_trains_tokenizer_and_model_and_resumes(tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--preset", "debug", "--vocab-size", "1024",
            "--steps", "20", "--seq-len", "64", "--lr", "3e-3"]
    pipeline.main(args)
    out = capsys.readouterr().out
    assert (tmp_path / "tokenizer.model").exists()
    assert (tmp_path / "pretrained" / "model.safetensors").exists()
    first, last = (float(x) for x in out.split("loss ")[-1].split(";")[0].split(" -> "))
    assert last < first
    pipeline.main(args)  # a second run skips the finished stages
    assert capsys.readouterr().out.count("exists:") == 2
