"""``bench decay-law``: a trained ResNet-BK's decay law beside its measured reach, and a
Transformer's reach alone; unreadable input as one line."""

import json

from resnetbk.bench.cli import main as cli_main


def test_the_law_and_the_reach_of_trained_models(tmp_path, tiny_data, capsys):
    runs = tmp_path / "runs"
    assert cli_main(["--preset", "smoke", "--models", "resnet_bk_baseline,transformer_baseline", "--data-dir",
                     str(tiny_data), "--output-dir", str(runs), "--quiet", "--threads", "1"]) == 0
    files = [str(runs / f"{m}_results.json") for m in ("resnet_bk_baseline", "transformer_baseline")]
    out = tmp_path / "law"
    assert cli_main(["decay-law", *files, "--output-dir", str(out)]) == 0
    doc = json.loads((out / "decay_law.json").read_text())
    bk, transformer = doc["rows"]
    assert len(bk["blocks"]) == 3 and transformer["blocks"] == []  # the smoke preset: 3 layers
    assert bk["predicted_relative"]["1"] is not None and transformer["predicted_relative"]["1"] is None
    assert bk["blocks"][0]["decay_per_position_best"] > 1  # a contraction: the past fades
    assert (out / "decay_law.png").stat().st_size > 0 and "| resnet_bk_baseline |" in (out / "decay_law.md").read_text()
    # The same run measured again from its checkpoint: the same law.
    again = tmp_path / "again"
    checkpoint = runs / "runs" / "resnet_bk_baseline" / "checkpoint.pt"
    assert cli_main(["decay-law", str(checkpoint), "--data-dir", str(tiny_data), "--output-dir", str(again)]) == 0
    (measured,) = json.loads((again / "decay_law.json").read_text())["rows"]
    assert measured["test_perplexity"] == bk["test_perplexity"]
    assert abs(measured["blocks"][0]["decay_per_position_best"] / bk["blocks"][0]["decay_per_position_best"] - 1) < 0.05
    capsys.readouterr()
    assert cli_main(["decay-law", str(tmp_path / "missing.json"), "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
