"""Checkpoints, devices and video output shared by every stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from config import get_config
from utils.errors import WorldModelsError
from utils.files import load_checkpoint, save_checkpoint, write_results_table
from utils.runtime import resolve_device
from utils.video import add_video, write_mp4


def test_checkpoint_round_trip_is_bit_exact_and_atomic(tmp_path):
    cfg = get_config("LunarLander-v3")
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LSTM(7, 3))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 5))[0].sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "run" / "vae.pt", "vae", cfg, model=model.state_dict(),
                           optimizer=optimizer.state_dict(), epoch=4, metrics={"loss": 1.5})
    assert [p.name for p in path.parent.iterdir()] == ["vae.pt"]  # no temp file left behind
    loaded = load_checkpoint(path, "vae", "LunarLander-v3")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["epoch"] == 4 and loaded["metrics"] == {"loss": 1.5}
    assert loaded["optimizer"]["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])


def test_bad_checkpoints_are_refused_with_the_reason(tmp_path):
    cfg = get_config("LunarLander-v3")
    path = save_checkpoint(tmp_path / "vae.pt", "vae", cfg)
    with pytest.raises(WorldModelsError, match="no vae checkpoint at .*python -m training.train_vae --env LunarLander-v3"):
        load_checkpoint(tmp_path / "missing.pt", "vae", "LunarLander-v3")
    with pytest.raises(WorldModelsError, match="is a 'vae' checkpoint, expected 'mdnrnn'"):
        load_checkpoint(path, "mdnrnn", "LunarLander-v3")
    with pytest.raises(WorldModelsError, match="trained on LunarLander-v3, not ALE/Pong-v5"):
        load_checkpoint(path, "vae", "ALE/Pong-v5")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WorldModelsError, match="cannot read checkpoint"):
        load_checkpoint(corrupt, "vae")


def test_checkpoint_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "stage": "vae", "payload": Evil()}, path)
    with pytest.raises(WorldModelsError, match="cannot read checkpoint"):
        load_checkpoint(path, "vae")


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(WorldModelsError, match="bad device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(WorldModelsError, match="CUDA is not available"):
            resolve_device("cuda")


def test_videos_are_written_as_mp4_and_tensorboard_animations(tmp_path):
    import imageio.v2 as imageio
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    frames = np.random.default_rng(0).integers(0, 255, (12, 63, 64, 3), dtype=np.uint8)
    path = write_mp4(frames, tmp_path / "clip.mp4", fps=10)
    reader = imageio.get_reader(str(path))
    decoded = [frame for frame in reader]
    assert len(decoded) == 12 and decoded[0].shape == (64, 64, 3)  # height padded to even

    writer = SummaryWriter(str(tmp_path / "logs"))
    add_video(writer, "rollout/video", frames, step=3, fps=10)
    writer.close()
    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"images": 0})
    events.Reload()
    image = events.Images("rollout/video")[0]
    assert image.step == 3 and image.encoded_image_string[:6] == b"GIF89a"


def test_results_table_is_written_as_markdown_and_json_with_no_temporaries_left(tmp_path):
    folder = tmp_path / "results" / "exp"  # does not exist yet
    written = write_results_table(folder, "table", "| a |\n|---|", {"rows": [{"a": 1.5}]})
    assert written == folder / "table.md"
    assert written.read_text() == "| a |\n|---|\n"
    assert json.loads((folder / "table.json").read_text()) == {"rows": [{"a": 1.5}]}
    assert sorted(p.name for p in folder.iterdir()) == ["table.json", "table.md"]
