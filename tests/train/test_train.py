from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from puzzle.errors import ConfigError, DataError
from puzzle.model import load_pretrained
from puzzle.presets import PRESETS, TrainConfig, get_preset
from puzzle.train import SUMMARY, StepInfo, lr_at, state_dir_of, train_parent
from tests.train import tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


def test_loss_falls_and_output_is_a_finished_hf_directory(tmp_path: Path, cache: Path) -> None:
    steps: list[StepInfo] = []
    result = train_parent(tiny.preset(steps=40), tmp_path / "p", tiny.CORPUS, cache_dir=cache, on_step=steps.append)
    assert [s.step for s in steps] == list(range(1, 41))
    assert all(s.tokens_per_s > 0 and math.isfinite(s.loss) for s in steps)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert first > math.log(tiny.VOCAB) - 1.0  # starts near uniform
    assert last < first - 1.0, (first, last)
    out = tmp_path / "p"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", SUMMARY} <= {
        f.name for f in out.iterdir()
    }
    assert not state_dir_of(out).exists()  # training state removed once the parent is written
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 0


def test_resume_after_interruption_matches_uninterrupted(tmp_path: Path, cache: Path) -> None:
    config = {"steps": 12, "checkpoint_every": 4}
    straight = train_parent(tiny.preset(**config), tmp_path / "a", tiny.CORPUS, cache_dir=cache)

    def interrupt(info: StepInfo) -> None:
        if info.step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_parent(tiny.preset(**config), tmp_path / "b", tiny.CORPUS, cache_dir=cache, on_step=interrupt)
    assert not (tmp_path / "b").exists()
    assert (state_dir_of(tmp_path / "b") / "checkpoint.pt").is_file()
    resumed = train_parent(tiny.preset(**config), tmp_path / "b", tiny.CORPUS, cache_dir=cache)
    assert resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-5)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def test_finished_parent_is_reused_and_mismatches_refused(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "p"
    first = train_parent(tiny.preset(steps=3), out, tiny.CORPUS, cache_dir=cache)
    again = train_parent(tiny.preset(steps=3), out, tiny.CORPUS, cache_dir=cache)
    assert again.reused and not first.reused and again.losses == first.losses
    with pytest.raises(ConfigError, match="other settings"):
        train_parent(tiny.preset(steps=4), out, tiny.CORPUS, cache_dir=cache)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        train_parent(tiny.preset(steps=3), tmp_path / "junk", tiny.CORPUS, cache_dir=cache)


def test_too_little_text_is_a_data_error(tmp_path: Path, cache: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("def f():\n    return 1\n" * 3)
    with pytest.raises(DataError, match="too few"):
        train_parent(tiny.preset(), tmp_path / "p", text, cache_dir=cache)


def test_lr_schedule() -> None:
    config = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(55, config) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert lr_at(100, config) == pytest.approx(1e-4)
    assert all(lr_at(s, config) >= lr_at(s + 1, config) for s in range(10, 100))


def test_presets_have_the_documented_shapes() -> None:
    llama = get_preset("tiny-llama").make_arch(8192)
    assert llama.family == "llama" and llama.n_layers == 8 and llama.hidden_size == 256
    att = llama.blocks[0].attention
    assert (att.n_heads, att.n_kv_heads, llama.blocks[0].ffn.intermediate_size) == (8, 4, 768)
    hybrid = get_preset("tiny-hybrid").make_arch(8192)
    kinds = "".join("M" if not b.mamba.is_no_op else "*" if not b.attention.is_no_op else "-" for b in hybrid.blocks)
    assert hybrid.family == "nemotron_h" and kinds == "M-M*-M-M*-"
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("huge")
    assert set(PRESETS) == {"tiny-llama", "tiny-hybrid"}


@pytest.mark.parametrize(("kind", "hf_class"), [("llama", "LlamaForCausalLM"), ("hybrid", "NemotronHForCausalLM")])
def test_transformers_loads_trained_parent_with_equal_logits(
    kind: str, hf_class: str, tmp_path: Path, cache: Path
) -> None:
    import transformers

    out = tmp_path / kind
    train_parent(tiny.preset(kind, steps=3), out, tiny.CORPUS, cache_dir=cache)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == hf_class
    ours = load_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = (tiny.CORPUS / "__init__.py").read_text()[:400]
    ids = torch.tensor([hf_tok(text)["input_ids"][:48]])
    from puzzle.data import load_tokenizer

    assert ids[0].tolist() == load_tokenizer(out).encode(text).ids[:48]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=0)


def test_steps_override_shortens_warmup(tmp_path: Path, cache: Path) -> None:
    seen: list[StepInfo] = []
    preset = tiny.preset(warmup_steps=4)
    result = train_parent(preset, tmp_path / "p", tiny.CORPUS, steps=20, cache_dir=cache, on_step=seen.append)
    assert result.steps == 20 and len(seen) == 20
    # warmup min(4, 20 // 10) = 2 steps: half the peak, then the peak
    assert [s.lr for s in seen[:2]] == pytest.approx([preset.train.lr / 2, preset.train.lr])


def test_kill_mid_run_resumes_past_step_zero_from_a_timed_checkpoint(tmp_path: Path, cache: Path) -> None:
    """Checkpoints by wall time as well as steps: kill -9 between step checkpoints loses seconds, not the run."""
    out = tmp_path / "p"
    config = {"steps": 100_000, "checkpoint_every": 100_000}  # no step checkpoint before the kill
    script = (
        "import sys; from puzzle.train import train_parent; from tests.train import tiny\n"
        f"train_parent(tiny.preset(**{config!r}), sys.argv[1], tiny.CORPUS, cache_dir=sys.argv[2],"
        " checkpoint_seconds=0.2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(out), str(cache)], cwd=REPO)
    checkpoint = state_dir_of(out) / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.is_file(), "no timed checkpoint was written"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
    assert 0 < step < 100_000

    seen: list[int] = []

    def stop_soon(info: StepInfo) -> None:
        seen.append(info.step)
        raise KeyboardInterrupt  # the resumed run starts where the killed one left off

    with pytest.raises(KeyboardInterrupt):
        train_parent(tiny.preset(**config), out, tiny.CORPUS, cache_dir=cache, on_step=stop_soon)
    assert seen[0] == step + 1
