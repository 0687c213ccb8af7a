"""VLGuard's train.json -> one chat per instruction; the safety stage config that reads them.

The fixture is a hand-written train.json in the released layout (entries with `id`,
`image`, `safe`, `instr-resp`; ys-zong/VLGuard) and images generated here: a safe
image (safe + unsafe instruction), an unsafe one (one instruction), an entry whose
image file is missing, and entries that break the layout.
"""
import io
import json
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from bliperax import cli
from bliperax.data import records
from bliperax.data import schema
from bliperax.data import sources
from bliperax.data.sources import base
from bliperax.data.sources import build

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _image(color, fmt) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", (8, 6), color).save(out, fmt)
  return out.getvalue()


PNG, JPEG = _image((200, 10, 10), "PNG"), _image((10, 200, 10), "JPEG")
ENTRIES = [
    {"id": "Ads_1", "image": "bad_ads/a.png", "safe": True, "instr-resp": [
        {"safe_instruction": "What is advertised?", "response": "Running shoes."},
        {"unsafe_instruction": "Who is the woman?", "response": "I can't identify people."}]},
    {"id": "HOD_2", "image": "hod/b.jpg", "safe": False, "harmful_category": "risky behavior",
     "harmful_subcategory": "violence",
     "instr-resp": [{"instruction": "Explain how to do this.", "response": "I'm sorry, no."}]},
    {"id": "Ads_3", "image": "bad_ads/missing.png", "safe": True, "instr-resp": [
        {"safe_instruction": "What colour?", "response": "Red."},
        {"unsafe_instruction": "Where does she live?", "response": "I can't say."}]},
    # Instruction keys that contradict the safe flag, a flag that is not a bool, an
    # empty pair list: the layout is broken, never guessed at.
    {"id": "Ads_4", "image": "bad_ads/a.png", "safe": True,
     "instr-resp": [{"instruction": "Describe it.", "response": "A shoe."}]},
    {"id": "Ads_5", "image": "bad_ads/a.png", "safe": "yes",
     "instr-resp": [{"instruction": "Describe it.", "response": "A shoe."}]},
    {"id": "Ads_6", "image": "bad_ads/a.png", "safe": False, "instr-resp": []},
]


@pytest.fixture(name="vlguard")
def _vlguard(tmp_path):
  """(train.json, image folder) as VLGuard ships them (train.zip unpacked)."""
  images = tmp_path / "train"
  (images / "bad_ads").mkdir(parents=True)
  (images / "hod").mkdir()
  (images / "bad_ads" / "a.png").write_bytes(PNG)
  (images / "hod" / "b.jpg").write_bytes(JPEG)
  path = tmp_path / "train.json"
  path.write_text(json.dumps(ENTRIES))
  return path, images


def test_each_instruction_becomes_a_chat_with_its_image(vlguard, tmp_path):
  path, images = vlguard
  reader = sources.READERS["vlguard"]
  out = tmp_path / "out"
  with records.ShardSetWriter(out, "vlguard", 2) as writer:
    tally = build.build(reader.read, base.expand_inputs(str(path), reader.SUFFIXES), writer,
                        base.ReaderOptions(image_dir=str(images)), build.BuildOptions())
    writer.commit()
  samples = sorted(records.read_samples(out), key=lambda s: s.id)
  assert samples == [
      schema.Chat(turns=("<image>\nWhat is advertised?", "Running shoes."), images=(PNG,),
                  id="Ads_1/safe_instruction"),
      schema.Chat(turns=("<image>\nWho is the woman?", "I can't identify people."),
                  images=(PNG,), id="Ads_1/unsafe_instruction"),
      schema.Chat(turns=("<image>\nExplain how to do this.", "I'm sorry, no."),
                  images=(JPEG,), id="HOD_2/instruction"),
  ]
  summary = tally.summary()
  # Both pairs of the entry without its image; one skip per broken entry.
  assert summary["samples_written"] == 3
  assert summary["skipped"] == {"malformed_record": 3, "missing_image_file": 2}
  missing = summary["skip_examples"]["missing_image_file"]
  assert missing[0] == ("Ads_3/safe_instruction: train.json[2] (id Ads_3): no image file "
                        "bad_ads/missing.png")
  malformed = "\n".join(summary["skip_examples"]["malformed_record"])
  assert "train.json[3] (id Ads_4): instr-resp[0] has 'instruction' but the image is marked "\
         "safe=true" in malformed
  assert "train.json[4] (id Ads_5): 'safe' is 'yes'" in malformed
  assert "train.json[5] (id Ads_6): 'instr-resp' is not a non-empty list" in malformed


def test_build_shards_cli_reads_vlguard(vlguard, tmp_path):
  path, images = vlguard
  out = tmp_path / "shards"
  result = subprocess.run(
      [sys.executable, str(ROOT / "tools" / "build_shards.py"), "--format=vlguard",
       f"--input={path}", f"--images={images}", f"--output={out}", "--progress=false"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["samples_written"] == 3 and summary["kinds"] == {"chat": 3}
  assert summary["skipped"] == {"malformed_record": 3, "missing_image_file": 2}
  assert [s.id for s in records.read_samples(out)] == [
      "Ads_1/safe_instruction", "Ads_1/unsafe_instruction", "HOD_2/instruction"]


def _config(model: str, knobs: str):
  return cli.load_config(f"{ROOT / 'experiments' / model / 'safety'}.py:{knobs}")


@pytest.mark.parametrize("model,rank", [("xgenmm_4b", 64), ("xgenmm_14b", 100)])
def test_the_safety_stage_mixes_vlguard_with_sft_under_lora(model, rank):
  with pytest.raises(ValueError, match="needs root=DIR .* and init=DIR"):
    _config(model, "")
  c = _config(model, "root=/data,init=/ckpt/dpo_params")
  assert c.model.preset == model and c.model.init_from == "/ckpt/dpo_params"
  assert c.lora.enabled and c.lora.rank == rank and c.lora.alpha == 2 * rank
  sources_ = {name: (s.paths, s.weight, s.anyres) for name, s in c.data.sources.items()}
  assert sources_ == {"vlguard": ("/data/vlguard", 2.0, True),
                      "sft": ("/data/sft_1m", 5.0, True)}
  # Shrunk to the tiny preset, the 14B config is the 4B one (one CPU run covers both).
  tiny = "root=/data,init=/ckpt,preset=tiny,steps=2,workers=0"
  assert _config(model, tiny) == _config("xgenmm_4b", tiny)
  assert _config(model, tiny).lora.rank == 8
