"""Recognizer.stream() and ``fairseq-hkd-transcribe --streaming`` on a real (2-update) checkpoint of a
chunk-trained model: fairseq's option parsing of the streaming options, loading, the CLI's lines."""
import pytest
import soundfile as sf

from test_scoring import make_data, quick_checkpoint


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    data = make_data(root / "data", "char", ["ab ba", "ba ab ab"], ["ab ab ba"])
    return quick_checkpoint(root, data, "--unit", "char", "--cmvn", "none", "--encoder-causal-conv",
                            "--encoder-chunk-size", "2", "--encoder-left-chunks", "1")


def test_recognizer_stream_equals_offline_and_the_cli_prints_fixed_and_final(stream_run, capsys):
    from fairseq_hkd.generation.transcribe import Recognizer, cli_main

    # a stream fixes each token when it fires: it equals offline decoding of the raw weights' count
    rec = Recognizer.from_checkpoint(str(stream_run.ckpt), beam=2, cpu=True, count_search=-1)
    enc = rec.model.encoder
    assert (enc.causal_conv, enc.chunk_size, enc.left_chunks) == (True, 2, 1)
    wav_path = stream_run.data / "wav" / "valid0.wav"
    offline = rec.transcribe([str(wav_path)])[0]
    wav, sr = sf.read(str(wav_path), dtype="float32")
    for chunk_ms in (float("inf"), 2 * 10 * rec.downsample):  # one chunk; the trained chunk (masked == cached)
        s = rec.stream(chunk_ms=chunk_ms)
        for i in range(0, len(wav), 1600):
            s.accept(wav[i:i + 1600])
        res = s.finish()
        assert res.symbols == offline.symbols, chunk_ms
    cli_main(["--streaming", "--path", str(stream_run.ckpt), "--chunk-ms", str(2 * 10 * rec.downsample),
              "--beam", "2", "--cpu", str(wav_path)])
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().split("\n")]
    assert lines[-1][0] == "valid0" and lines[-1][2] == "final" and lines[-1][3] == offline.text
    assert all(kind in ("fixed", "partial", "final") for _, _, kind, *_ in lines)
    times = [float(t) for _, t, _, *_ in lines]
    assert times == sorted(times)
    with pytest.raises(SystemExit, match="shorter than one encoder frame|nothing"):
        cli_main(["--streaming", "--path", str(stream_run.ckpt), "--chunk-ms", "5", "--cpu", str(wav_path)])
