"""``vpengine embed``'s stdout is its JSON summary alone, so a pipe
(``| jq .skipped``) reads one document; progress and warnings are on stderr."""
import json

import vpengine
from vpengine.cli import main
from vpengine.model import EncoderConfig

ENC = EncoderConfig(width=32, num_spatial_layers=1, num_temporal_layers=1, num_heads=2, mlp_dim=48,
                    patch_size=8, pos_emb_shape=(4, 2, 2))


def _embed(tmp_path, rows, *extra):
    model, manifest = tmp_path / "m.safetensors", tmp_path / "m.jsonl"
    vpengine.save(vpengine.build(ENC, seed=0), model)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return main(["embed", str(manifest), "--model", str(model), "--out", str(tmp_path / "e.npz"), "--frames", "4",
                 "--size", "16", "--batch", "1", "--decoder", "pyav", *extra])


def test_stdout_is_the_summary_and_progress_is_on_stderr(tmp_path, capsys):
    from vpengine.data import encode_video, pattern_frames

    clip = encode_video(tmp_path / "v.mp4", pattern_frames(6, 32, 32, seed=0))
    (tmp_path / "bad.mp4").write_text("not a video")
    rc = _embed(tmp_path, [{"path": clip}, {"path": str(tmp_path / "bad.mp4")}, {"path": clip}])
    out, err = capsys.readouterr()
    summary = json.loads(out)  # the whole of stdout: one JSON document
    assert rc == 0 and (summary["clips"], summary["skipped"]) == (2, 1)
    assert summary["bad_files"][0]["path"] == str(tmp_path / "bad.mp4")
    assert "embedded 2 clips" in err


def test_warnings_are_on_stderr(tmp_path, capsys):
    rc = _embed(tmp_path, [])
    out, err = capsys.readouterr()
    assert rc == 1 and json.loads(out)["clips"] == 0
    assert "has no rows" in err and "no clip could be embedded" in err
